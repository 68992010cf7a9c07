"""Idempotent starts: a start sent with an `Idempotency-Key` header answers, to the same key (per
user and endpoint) with the same body within IDEMPOTENCY_KEY_TTL, what its first request
answered, and starts nothing more. The views of the starts wrap their answer in `idempotent()`.

A request claims its key by inserting the key's row, committed at once: the unique constraint
lets one claim win however many race. The start then goes as without a key (an interrupt
included, which must not wait inside a transaction), and the run it saves is linked to the claim
in the start's own transaction (`link_run`, on run_started), so the run and its key commit
together or not at all; the answer is stored last. A request that finds the key claimed but not
answered yet waits for the answer, up to IDEMPOTENCY_KEY_WAIT, and replays it (else 409). A
request that fails (400, 409, 429, 503...) gives its claim back: the key is free again."""

import contextvars
import hashlib
import json
import time
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.response import Response
from rest_framework.utils.encoders import JSONEncoder

from .errors import IdempotencyKeyInProgress, IdempotencyKeyReused, ServiceError
from .models import FollowUp, IdempotencyKey

HEADER = "Idempotency-Key"
MAX_LENGTH = 255

# the claim of the request this thread (or task) is answering, for link_run
_claim = contextvars.ContextVar("idempotency_claim", default=None)


def idempotent(request, answer):
    """`answer()` (the view's Response), unless the request's Idempotency-Key was answered
    already: then that answer again, with status 200. No header: `answer()`."""
    key = request.headers.get(HEADER)
    if key is None:
        return answer()
    if not (0 < len(key) <= MAX_LENGTH and all(" " <= c <= "~" for c in key)):
        raise ServiceError(
            f"An {HEADER} is 1 to {MAX_LENGTH} printable ASCII characters.", field=HEADER
        )
    scope = f"{request.method} {request.path}"[:200]
    row = key_claim(owner=request.user, scope=scope, key=key, fingerprint=fingerprint(request.data))
    if row.answer:
        return Response(json.loads(row.answer), status=200)
    token = _claim.set(row)
    try:
        response = answer()
    except BaseException:
        IdempotencyKey.objects.filter(pk=row.pk, claim=row.claim).delete()
        raise
    finally:
        _claim.reset(token)
    if response.status_code >= 400:
        IdempotencyKey.objects.filter(pk=row.pk, claim=row.claim).delete()
    else:
        body = json.dumps(response.data, cls=JSONEncoder, separators=(",", ":"))
        IdempotencyKey.objects.filter(pk=row.pk, claim=row.claim).update(answer=body)
    return response


def fingerprint(data):
    """SHA-256 of the parsed body as canonical JSON (keys sorted, no spaces): the same body
    whatever its spacing or key order."""
    if hasattr(data, "dict"):  # an empty body parses as an empty QueryDict
        data = data.dict()
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), cls=JSONEncoder)
    return hashlib.sha256(text.encode()).hexdigest()


def key_claim(*, owner, scope, key, fingerprint):
    """The key's row: a new claim for this request (no `answer`), or the answered one (a
    replay). Raises IdempotencyKeyReused for another body, IdempotencyKeyInProgress when the
    first request has not answered within IDEMPOTENCY_KEY_WAIT."""
    deadline = time.monotonic() + settings.IDEMPOTENCY_KEY_WAIT
    found = IdempotencyKey.objects.filter(owner=owner, scope=scope, key=key)
    row = None
    while True:
        if time.monotonic() > deadline:
            extra = {"run": str(row.run_id)} if row and row.run_id else {}
            raise IdempotencyKeyInProgress(
                f"A request with this {HEADER} is still in progress; try again shortly.",
                field=HEADER,
                **extra,
            )
        now = timezone.now()
        try:
            with transaction.atomic():
                # on PostgreSQL an insert racing another's uncommitted one waits for its end
                return IdempotencyKey.objects.create(
                    owner=owner, scope=scope, key=key, fingerprint=fingerprint, created=now
                )
        except IntegrityError:
            row = found.first()
        if row is None:
            continue  # given back (a failed request) or purged meanwhile: claim it again
        if row.created < now - timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL):
            found.filter(pk=row.pk, created=row.created).delete()  # expired, not yet purged
            continue
        if row.fingerprint != fingerprint:
            raise IdempotencyKeyReused(
                f"This {HEADER} was used with another body; use a new key for a new request.",
                field=HEADER,
            )
        if row.answer:
            return row
        stale = now - timedelta(seconds=settings.IDEMPOTENCY_KEY_STALE)
        if row.run_id is None and row.created < stale:
            # the process holding the claim died before starting anything: take it over
            claim = uuid.uuid4()
            if found.filter(pk=row.pk, claim=row.claim, run=None, answer="").update(
                claim=claim, created=now
            ):
                row.claim, row.created = claim, now
                return row
            continue
        time.sleep(0.05)


def link_run(sender, run, **kwargs):
    """run_started's receiver: the run a claimed request starts is its key's, committed with
    it. A follow-up's run that starts meanwhile (a schedule's stop of its previous run) is not
    the request's."""
    row = _claim.get()
    if row is None or row.run_id is not None or FollowUp.objects.filter(run=run).exists():
        return
    if not IdempotencyKey.objects.filter(pk=row.pk, claim=row.claim, run=None).update(run=run):
        raise IdempotencyKeyInProgress(
            f"Another request took this {HEADER} over; try again shortly.", field=HEADER
        )
    row.run_id = run.pk


def keys_purge(*, now=None):
    """Delete the keys older than IDEMPOTENCY_KEY_TTL (a beat entry, every 10 minutes).
    Returns how many."""
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL)
    return IdempotencyKey.objects.filter(created__lt=cutoff).delete()[0]
