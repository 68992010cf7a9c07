"""OpenTelemetry tracing: off unless OTEL_EXPORTER_OTLP_ENDPOINT (or its traces variant) is set.
Then each process installs, once, at its start (config.asgi and config.wsgi for web, the Celery
signals of config.celery for the worker and beat): the SDK's tracer provider, a batching OTLP/HTTP
exporter, and the official instrumentations of Django, Celery, psycopg (or SQLite) and Redis.
The standard OTEL_* variables (service name, headers, sampler, batching) are read by the SDK
itself.

Off, nothing of the SDK is even imported, and the spans the apps make through the API
(opentelemetry.trace) are no-ops."""

import logging
import os
import threading

log = logging.getLogger(__name__)

ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_lock = threading.Lock()
_provider = None


def tracing_enabled():
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(os.environ.get(name, "").strip() for name in ENDPOINTS)


def tracing_setup(*, service, web=False):
    """Install tracing in this process if it is configured, as `service` unless OTEL_SERVICE_NAME
    (or service.name in OTEL_RESOURCE_ATTRIBUTES) names it; `web`: instrument Django too, which
    must happen before Django's handler loads its middleware. Returns the tracer provider, or
    None when tracing is off. A second call returns the first one's provider."""
    global _provider
    if not tracing_enabled():
        return None
    with _lock:
        if _provider is None:
            _provider = _install(service, web)
    return _provider


def tracing_flush(timeout_seconds=5):
    """Export what is buffered, waiting at most `timeout_seconds` (an exporter that is down
    costs this long, once): for a process that ends without running atexit handlers (a prefork
    child)."""
    if _provider is not None:
        _provider.force_flush(int(timeout_seconds * 1000))


def _install(service, web):
    import sqlite3.dbapi2

    from django.conf import settings
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation import dbapi
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if resource.attributes.get(SERVICE_NAME, "").startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    provider = TracerProvider(resource=resource)  # its sampler: OTEL_TRACES_SAMPLER
    provider.sampler = _no_orphan_client_spans(provider.sampler)
    # The batch goes out from a thread of its own: a collector that is down or slow costs the
    # runs nothing (a full queue drops spans, OTEL_BSP_MAX_QUEUE_SIZE), and is logged.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    if web:
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        DjangoInstrumentor().instrument()
    CeleryInstrumentor().instrument()  # the web and beat publish tasks, the worker runs them
    PsycopgInstrumentor().instrument()
    if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
        # what opentelemetry-instrumentation-sqlite3 does, on the DB-API instrumentation it is
        # built on (and psycopg's is): Django connects through sqlite3.dbapi2
        dbapi.wrap_connect(__name__, sqlite3.dbapi2, "connect", "sqlite")
    RedisInstrumentor().instrument()
    log.info("tracing on: %s exports to %s", resource.attributes[SERVICE_NAME], _endpoint())
    return provider


def _endpoint():
    return next(os.environ[name] for name in reversed(ENDPOINTS) if os.environ.get(name))


def _no_orphan_client_spans(sampler):
    """The sampler OTEL_TRACES_SAMPLER names, except that a client span (a Redis command, an SQL
    query) starting a trace of its own is dropped: the worker's heartbeat and stop listener, and
    Celery polling its broker, would make several such one-span traces a second. Inside a
    request, a task or a run they are kept."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    class NoOrphanClientSpans(Sampler):
        def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None,
                          links=None, trace_state=None):  # fmt: skip
            parent = trace.get_current_span(parent_context).get_span_context()
            if kind == trace.SpanKind.CLIENT and not parent.is_valid:
                return SamplingResult(Decision.DROP)
            return sampler.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self):
            return f"NoOrphanClientSpans{{{sampler.get_description()}}}"

    return NoOrphanClientSpans()
