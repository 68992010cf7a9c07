from celery import shared_task
from celery.exceptions import Reject
from celery.signals import task_postrun, worker_shutting_down
from django.conf import settings

from . import idempotency, loop, metrics, repair
from .worker import worker


# Time limits only apply under the prefork pool; the run loop enforces RUN_TIME_LIMIT itself,
# which covers the threads pool the workers use by default.
@shared_task(soft_time_limit=settings.RUN_TIME_LIMIT + 30, time_limit=settings.RUN_TIME_LIMIT + 90)
def execute_run_task(run_id):
    if worker.shutting_down:
        # a message this process took as it began to shut down (the runs it handed back are
        # sent again then): back to the queue, for another worker
        raise Reject("the worker is shutting down", requeue=True)
    loop.execute(run_id)


@shared_task
def reap_runs_task():
    return repair.runs_reap()


@shared_task
def purge_idempotency_keys_task():
    return idempotency.keys_purge()


@worker_shutting_down.connect
def hand_back_runs(**kwargs):
    """On a warm shutdown (SIGTERM), the runs this process executes (the threads pool: they are
    in this process) go back to the queue, resumed by another worker, instead of holding the
    shutdown until they end."""
    worker.hand_back()


@task_postrun.connect
def flush_metrics(sender=None, **kwargs):
    """What any task recorded (a webhook's delivery, a schedule's fire) is sent when it ends. A
    run's went with its end (ops/receivers.py): a busy worker's other runs have always recorded
    something meanwhile, which their own ends send, so a run costs no third round trip."""
    if sender is not execute_run_task:
        metrics.flush()
