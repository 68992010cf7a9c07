from celery import shared_task
from django.conf import settings

from . import loop, repair


# Time limits only apply under the prefork pool; the run loop enforces RUN_TIME_LIMIT itself,
# which covers the threads pool the workers use by default.
@shared_task(soft_time_limit=settings.RUN_TIME_LIMIT + 30, time_limit=settings.RUN_TIME_LIMIT + 90)
def execute_run_task(run_id):
    loop.execute(run_id)


@shared_task
def reap_runs_task():
    return repair.runs_reap()
