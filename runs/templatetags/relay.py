from django import template
from django.utils.html import json_script
from django.utils.safestring import mark_safe

from runs.markdown import render
from runs.models import Run

register = template.Library()

USAGE = "{in} in · {out} out tokens"


@register.simple_tag
def usage_format():
    """A run's token usage as the page shows it; the page's script fills in the same format."""
    return USAGE


@register.simple_tag
def usage_text(input_tokens, output_tokens):
    return USAGE.replace("{in}", str(input_tokens)).replace("{out}", str(output_tokens))


@register.simple_tag
def run_statuses():
    """The run statuses for the pages' scripts (runs.js), from the model: not copied into JS."""
    return json_script(
        {"active": list(Run.ACTIVE), "terminal": list(Run.TERMINAL)}, "relay-run-statuses"
    )


@register.filter
def markdown(text):
    return mark_safe(render(text))
