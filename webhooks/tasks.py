from celery import shared_task

from . import services


@shared_task
def deliver_webhook_task(delivery_id):
    services.delivery_attempt(delivery_id=delivery_id)


@shared_task
def sweep_webhooks_task():
    return services.deliveries_sweep()
