"""Beat's scheduler (settings.CELERY_BEAT_SCHEDULER): django-celery-beat's DatabaseScheduler,
made to hold while schedules are created, changed and deleted as it reads and writes them."""

import logging

from django.db.models import Case, DateTimeField, Value, When
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry

log = logging.getLogger(__name__)


class Entry(ModelEntry):
    def save(self):
        # The library reads the row and saves it whole. For a task deleted in between, save()
        # updates nothing and INSERTs it again: pointing at its deleted crontab (an
        # IntegrityError that ends the sync), or bringing back a task deleted on its own. An
        # UPDATE of what beat owns writes to the row if it is there and never brings one back.
        PeriodicTask.objects.filter(pk=self.model.pk).update(
            total_run_count=self.model.total_run_count,
            # as PeriodicTask.save does: a paused task starts over from its resume
            last_run_at=Case(
                When(enabled=True, then=Value(self.model.last_run_at)),
                default=None,
                output_field=DateTimeField(),
            ),
        )

    def _disable(self, model):
        model.no_changes, model.enabled = True, False
        PeriodicTask.objects.filter(pk=model.pk).update(enabled=False, last_run_at=None)


class Scheduler(DatabaseScheduler):
    Entry = Entry

    def enabled_models_qs(self):
        # One query, so one snapshot. The library prefetches the schedules in queries of their
        # own: a schedule deleted between the two left its task with crontab None, and beat
        # exited on it (AttributeError in all_as_schedule).
        return (
            super()
            .enabled_models_qs()
            .prefetch_related(None)
            .select_related("interval", "crontab", "solar", "clocked")
        )

    def enabled_models(self):
        # A task with no schedule at all (written past the admin's checks) is left out rather
        # than stop beat, and with it every schedule and the reaper.
        models = []
        for model in super().enabled_models():
            if model.scheduler is None:
                log.error("beat: periodic task %r has no schedule; left out", model.name)
            else:
                models.append(model)
        return models
