"""The engine's spans, through OpenTelemetry's API (no-ops unless config/tracing.py set up a
provider): the span of each attempt of a run, and the traceparent a run keeps so that all its
attempts share one trace.

A run's first attempt is sent from the span that started it (an API request, a schedule's fire),
and the Celery instrumentation carries that context to the worker in the task's headers. A later
attempt is sent by someone else: a person's answer to a waiting run, the reaper resuming a lost
one, a worker handing its runs back. Its task span is in that sender's trace; its run span goes
back into the run's own trace (a child of the span that started the run, from `traceparent`), and
the two are linked both ways."""

import contextlib

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

tracer = trace.get_tracer("relay.runs")
_w3c = TraceContextTextMapPropagator()


def traceparent():
    """The current span as a W3C traceparent; empty outside any span (and with tracing off)."""
    carrier = {}
    _w3c.inject(carrier)
    return carrier.get("traceparent", "")


@contextlib.contextmanager
def run_span(run):
    """The span of this attempt of the claimed `run`, current inside the block."""
    parent, links = None, ()
    sender = trace.get_current_span()
    started = _span_context(run.traceparent)
    if started.is_valid and started.trace_id != sender.get_span_context().trace_id:
        parent = trace.set_span_in_context(trace.NonRecordingSpan(started))
        if sender.get_span_context().is_valid:
            links = [trace.Link(sender.get_span_context(), {"relay.link": "sent by"})]
            sender.add_link(started, {"relay.link": "continues run"})
    attributes = {
        "relay.run.id": str(run.pk),
        "relay.run.kind": run.kind,
        "relay.run.trigger": run.trigger,
        "relay.run.attempt": run.attempt,
    }
    with tracer.start_as_current_span(
        "run", context=parent, links=links, attributes=attributes
    ) as span:
        yield span


def run_span_end(span, run, loop=None):
    """The attempt's outcome on its span: the run's status after it (waiting, queued when handed
    back, a terminal one; `lost` when the reaper took it), the tokens it used, an error status
    when the run failed."""
    if not span.is_recording():
        return
    status = "lost" if run.status == run.Status.RUNNING else run.status
    span.set_attribute("relay.run.status", status)
    if loop is not None:
        span.set_attribute("gen_ai.usage.input_tokens", loop.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", loop.output_tokens)
    if run.status == run.Status.FAILED:
        span.set_status(trace.Status(trace.StatusCode.ERROR, run.error))


def _span_context(traceparent):
    if not traceparent:
        return trace.INVALID_SPAN_CONTEXT
    context = _w3c.extract({"traceparent": traceparent})
    return trace.get_current_span(context).get_span_context()
