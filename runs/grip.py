"""GRIP mode: Pushpin holds the event streams, the web processes hold none.

With GRIP_URL set (Pushpin's control endpoint), a stream request that comes through Pushpin is
answered at once: the events the client lacks, and instructions to hold the connection open
and subscribe it to the run's channel after the last event sent (`prev-id`). Every append is
then published to Pushpin with its id and the id before it. Pushpin delivers an event only if
it follows on from the last one the connection has; otherwise it asks the web process again,
through the `Grip-Link` next URL, for what comes after that last id (its recovery path), so
ordering and no-duplicates hold as in the direct mode, whatever order publishes arrive in.

GRIP_URL must carry Pushpin's signing key, as django_grip spells it
(`http://127.0.0.1:5561?verify-iss=pushpin&verify-key=<sig_key>`; the settings refuse a GRIP_URL
without one): only requests that Pushpin signed are treated as proxied, so only those are
answered without the client's credentials. docs/deploy.md has the whole setup.
"""

import base64
import http.client
import json
import logging
import time
from functools import cache
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from django.conf import settings
from django.core import signing

log = logging.getLogger(__name__)

LINK_SALT = "relay.grip.link"
KEEP_ALIVE = base64.b64encode(b": keep-alive\n\n").decode()
# Pushpin asks for a held stream's next link when it has received nothing for this long; the
# answer is then empty. Its default, 120 s, would make idle streams cost requests.
LINK_TIMEOUT = 3600
# A grant's expiry is rounded up to this many seconds, so that the clients of a run share one
# link (Pushpin then recovers once for all of them) while it stays the same.
GRANT_BUCKET = 60


def enabled():
    return bool(settings.GRIP_URL)


@cache
def _control(url):
    """(host, port, publish path, verify key, verify issuer) from GRIP_URL."""
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    path = parts.path.rstrip("/") + "/publish/"
    return parts.hostname, parts.port or 80, path, query.get("verify-key"), query.get("verify-iss")


def proxied(request):
    """Whether the request came through Pushpin, which signs what it forwards (and strips any
    Grip- header a client sends)."""
    signature = request.headers.get("Grip-Sig")
    if not enabled() or not signature:
        return False
    *_, key, issuer = _control(settings.GRIP_URL)
    try:
        jwt.decode(signature, key, algorithms=["HS256"], issuer=issuer)
    except jwt.InvalidTokenError:
        return False
    return True


def hold_headers(request, channel, last_id):
    """The instructions that make Pushpin keep the stream open after the response's body;
    repeated in full in every answer to a recovery, which replaces them.

    A recovery request carries none of the client's headers, so the next link carries a
    signed grant for the channel. It is the same for every client of a run (within a
    GRANT_BUCKET), so Pushpin asks once for all of them (it makes at most ten such requests a
    second), and it never reaches a client: Pushpin strips the Grip- headers. It expires when
    the run's log does at the latest (the longest run, then the retention window), and it is
    honoured only on a request Pushpin signed."""
    lifetime = settings.RUN_TIME_LIMIT + settings.RUN_EVENTS_RETENTION
    expires = -(-int(time.time() + lifetime) // GRANT_BUCKET) * GRANT_BUCKET
    grant = signing.Signer(salt=LINK_SALT).sign(f"{channel}@{expires}")
    return {
        "Grip-Hold": "stream",
        "Grip-Channel": f"{channel}; prev-id={last_id}",
        "Grip-Keep-Alive": (
            f"{KEEP_ALIVE}; format=base64; timeout={settings.SSE_KEEPALIVE_SECONDS:g}"
        ),
        "Grip-Link": (
            f"<{request.path}?{urlencode({'grant': grant})}>; rel=next; timeout={LINK_TIMEOUT}"
        ),
    }


def granted(request, channel):
    """Whether a recovery request's link was made for `channel` by this application, and has
    not expired."""
    try:
        value = signing.Signer(salt=LINK_SALT).unsign(request.GET.get("grant", ""))
    except signing.BadSignature:
        return False
    granted_channel, _, expires = value.rpartition("@")
    return granted_channel == channel and expires.isdigit() and int(expires) > time.time()


def publish(channel, event_id, content, close=False):
    """Send one event to Pushpin; with `close`, end the held streams after it. A failure loses
    only the live copy: Pushpin recovers the event from the log at the next publish, or the
    client at its next connection."""
    items = [
        {
            "channel": channel,
            "id": str(event_id),
            "prev-id": str(event_id - 1),
            "formats": {"http-stream": {"content": content}},
        }
    ]
    if close:  # a close carries no content, and must follow on like any other item
        items.append(
            {
                "channel": channel,
                "prev-id": str(event_id),
                "formats": {"http-stream": {"action": "close"}},
            }
        )
    host, port, path, *_ = _control(settings.GRIP_URL)
    # Pushpin closes the connection after each publish: a new one each time (about 0.2 ms).
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request(
            "POST", path, json.dumps({"items": items}), {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        if response.status != 200:
            log.warning("%s: Pushpin refused event %s: %s", channel, event_id, response.read())
    except (OSError, http.client.HTTPException) as exc:
        log.warning("%s: could not publish event %s to Pushpin: %s", channel, event_id, exc)
    finally:
        connection.close()
