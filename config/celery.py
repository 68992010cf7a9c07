"""The Celery app: settings come from Django's, under the CELERY_ prefix. Tracing (off unless
configured: config/tracing.py) is set up where the tasks run: in the worker's process for the
threads and solo pools, in each child for prefork (a span exporter's thread does not cross a
fork); and in beat."""

import os

from celery import Celery, concurrency, signals

from config.tracing import tracing_flush, tracing_setup

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("relay")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_init.connect
def _trace_worker(sender, **kwargs):
    from celery.concurrency.prefork import TaskPool as PreforkPool

    if not issubclass(concurrency.get_implementation(sender.pool_cls), PreforkPool):
        tracing_setup(service="relay-worker")


@signals.worker_process_init.connect
def _trace_worker_process(**kwargs):
    tracing_setup(service="relay-worker")


@signals.worker_process_shutdown.connect
def _flush_worker_process(**kwargs):
    tracing_flush()  # a prefork child ends with os._exit: no atexit handler runs


@signals.beat_init.connect
def _trace_beat(**kwargs):
    tracing_setup(service="relay-beat")
