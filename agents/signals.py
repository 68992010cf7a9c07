from django.conf import settings
from django.db.models.signals import post_save
from django.dispatch import receiver

DEMO_AGENT = {
    "name": "Demo",
    "instructions": "You are a helpful assistant.",
    "model": "demo",
    "tools": ["calculator", "current_time"],
    "config": {"demo": {"words": 60, "delay_ms": 40}},
}


@receiver(post_save, sender=settings.AUTH_USER_MODEL)
def give_new_user_a_demo_agent(sender, instance, created, raw=False, **kwargs):
    if created and not raw:
        instance.agents.create(**DEMO_AGENT)
