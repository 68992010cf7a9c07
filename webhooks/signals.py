"""What webhooks tell whoever counts them (a metrics exporter): sent after each attempt is
recorded, outside any transaction."""

from django.dispatch import Signal

# an attempt recorded: attempt (its outcome among Attempt.Outcome, status_code, duration_ms),
# delivery (its event, and status: still pending when it will be retried)
attempt_recorded = Signal()
