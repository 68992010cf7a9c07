"""Errors a caller can act on. Each kind carries its HTTP status and code; runs/http.py turns
them into responses in one place, and pages show their message."""


class ServiceError(Exception):
    status = 400
    code = "invalid"

    def __init__(self, message, **extra):
        super().__init__(message)
        self.message = message
        self.extra = extra  # more fields of the answer, such as the `field` or the `run` at fault

    def headers(self):
        """HTTP headers of the answer, such as a 429's Retry-After."""
        return {}


class ThreadBusy(ServiceError):
    status = 409
    code = "thread_busy"


class ServiceConflict(ServiceError):
    status = 409
    code = "conflict"


class TooManyRuns(ServiceError):
    status = 429
    code = "too_many_runs"


class TooManyFollowUps(ServiceError):
    status = 429
    code = "too_many_follow_ups"


class QueueUnavailable(ServiceError):
    status = 503
    code = "queue_unavailable"


class IdempotencyKeyReused(ServiceError):
    status = 422
    code = "idempotency_key_reused"


class IdempotencyKeyInProgress(ServiceError):
    status = 409
    code = "idempotency_key_in_progress"
