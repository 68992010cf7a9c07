"""What users' runs used, per UTC day and agent, and the daily token budgets an administrator
sets per user."""

from django.conf import settings
from django.db import models
from django.db.models import Sum


class DailyUsageQuerySet(models.QuerySet):
    def tokens(self):
        """Input + output tokens of the rows."""
        totals = self.aggregate(i=Sum("input_tokens"), o=Sum("output_tokens"))
        return (totals["i"] or 0) + (totals["o"] or 0)


class DailyUsage(models.Model):
    """A ledger row: the runs a user started on a UTC day with one agent, and the tokens their
    attempts reported that day. Rows are added to in the transactions that add tokens to a
    run's columns (runs.signals.run_usage), so each attempt's tokens count once, on the day
    they were saved.

    The agent is kept as its id and name, not a foreign key: what was used stays used when
    the agent, the thread or the run is deleted (a deleted thread must not give a budget
    back)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="daily_usage")
    day = models.DateField()
    agent_key = models.PositiveBigIntegerField(default=0, help_text="the agent's id; 0: none")
    agent_name = models.CharField(max_length=100, blank=True, help_text="as it was last used")
    runs = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)

    objects = DailyUsageQuerySet.as_manager()

    class Meta:
        ordering = ["day", "agent_key"]
        verbose_name_plural = "daily usage"
        constraints = [
            models.UniqueConstraint(fields=["owner", "day", "agent_key"], name="daily_usage_unique")
        ]

    def __str__(self):
        return f"{self.owner} {self.day} {self.agent_name or 'no agent'}"


class Budget(models.Model):
    """A user's own daily token budget. Without one, RUN_DAILY_TOKEN_BUDGET applies."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, models.CASCADE, primary_key=True, related_name="token_budget"
    )
    daily_tokens = models.PositiveBigIntegerField(
        null=True, blank=True,
        help_text="input + output tokens per UTC day; empty: the default"
        " (RUN_DAILY_TOKEN_BUDGET); 0: no budget for this user",
    )  # fmt: skip

    def __str__(self):
        return f"{self.user}: {self.daily_tokens}"

    @staticmethod
    def of(user_id):
        """The user's daily token budget, or None when they have none."""
        own = Budget.objects.filter(user_id=user_id).values_list("daily_tokens", flat=True)
        tokens = next(iter(own), None)
        if tokens is None:
            tokens = settings.RUN_DAILY_TOKEN_BUDGET
        return tokens or None
