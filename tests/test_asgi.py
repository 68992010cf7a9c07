"""The ASGI application (config/asgi.py) as the live web process serves it."""

from pathlib import Path

import django.contrib.admin
import httpx
import pytest

pytestmark = [pytest.mark.e2e]

STATIC = Path(django.contrib.admin.__file__).parent / "static"


@pytest.mark.django_db(transaction=True)
def test_it_streams_files_asynchronously(live):
    """WhiteNoise answers with a file iterator, which Django's handler would read whole into
    memory in a thread, warning `StreamingHttpResponse must consume synchronous iterators`."""
    for name in ("admin/js/vendor/jquery/jquery.js", "admin/css/base.css"):  # 285 KB, 22 KB
        r = httpx.get(f"{live.base_url}/static/{name}")
        assert r.status_code == 200
        assert r.content == (STATIC / name).read_bytes()
    assert "must consume synchronous iterators" not in (live.logs / "web.log").read_text()
