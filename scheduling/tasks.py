from celery import shared_task

from . import services


@shared_task
def fire_schedule_task(schedule_id):
    services.schedule_fire(schedule_id=schedule_id)
