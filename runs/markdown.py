"""Assistant Markdown as HTML that is safe to put in a page: rendered by Markdown, then
sanitized by nh3, so neither a model nor a tool can inject script or styles."""

import markdown as markdown_lib
import nh3

TAGS = {
    "p", "br", "hr", "pre", "code", "em", "strong", "del", "blockquote", "a",
    "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
    "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "th": {"align"}, "td": {"align"}}


def render(text):
    html = markdown_lib.markdown(text, extensions=["fenced_code", "tables", "sane_lists"])
    return nh3.clean(
        html,
        tags=TAGS,
        attributes=ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
