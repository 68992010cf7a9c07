import hmac

from django.conf import settings
from django.http import HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from runs import metrics

from .collector import registry


@require_GET
def metrics_view(request):
    """/metrics, for Prometheus: 404 unless METRICS_TOKEN is set (nothing is served by default),
    then 401 without `Authorization: Bearer <METRICS_TOKEN>`. Whichever web process answers,
    the numbers are the same: they are all in Redis and the database."""
    token = settings.METRICS_TOKEN
    if not token:
        return HttpResponse("Not found.\n", status=404, content_type="text/plain")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        return HttpResponse(
            "A valid bearer token is required.\n",
            status=401,
            content_type="text/plain",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    metrics.flush()  # what this process recorded is in what it shows
    # the text format every Prometheus reads (Debian 12's 2.42 too); Relay's names need no more
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_PLAIN_0_0_4)
