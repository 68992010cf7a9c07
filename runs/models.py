"""What every run has, whatever its kind: the thread it runs on, the thread's messages, and the
run itself with its lifecycle's columns. Nothing here knows agents or workflows: their apps link
their own rows to these (one-to-one), so the engine's tables never point at theirs."""

import uuid

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import Max, Q

from .errors import ThreadBusy
from .markdown import render


class Thread(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="threads")
    title = models.CharField(max_length=200, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated", "-id"]

    def __str__(self):
        return self.title or f"Thread {self.pk}"

    def append_message(self, **fields):
        """Add a message at the end of the thread.

        Positions are unique per thread; two writers racing for the same position (a stopped
        run saving its partial reply while a new run starts) retry with the next one."""
        for _ in range(5):
            position = (self.messages.aggregate(m=Max("position"))["m"] or 0) + 1
            try:
                with transaction.atomic():
                    return Message.objects.create(thread=self, position=position, **fields)
            except IntegrityError:
                continue
        raise IntegrityError(f"could not append a message to thread {self.pk}")

    def delete_if_idle(self):
        """Delete the thread, unless a run is active on it (ThreadBusy): stop that first."""
        if Run.objects.active_on(self).exists():
            raise ThreadBusy("This thread has an active run; stop it first.")
        self.delete()


class Message(models.Model):
    class Role(models.TextChoices):
        SYSTEM = "system"
        USER = "user"
        ASSISTANT = "assistant"
        TOOL = "tool"

    thread = models.ForeignKey(Thread, models.CASCADE, related_name="messages")
    run = models.ForeignKey("Run", models.SET_NULL, null=True, blank=True, related_name="messages")
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField(blank=True)
    # assistant: [{"id", "name", "arguments"}]; tool: the call it answers and the tool's name
    tool_calls = models.JSONField(default=list, blank=True)
    tool_call_id = models.CharField(max_length=100, blank=True)
    name = models.CharField(max_length=100, blank=True)
    is_error = models.BooleanField(default=False, help_text="a tool result that is an error")
    # a reply cut short by a lost worker, kept as it was and left out of the model's history
    interrupted = models.BooleanField(default=False)
    position = models.PositiveIntegerField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["thread", "position"]
        constraints = [
            models.UniqueConstraint(fields=["thread", "position"], name="message_position_unique")
        ]

    def __str__(self):
        return f"{self.role}: {self.content[:60]}"

    def as_event(self):
        return {
            "html": render(self.content) if self.role == self.Role.ASSISTANT else "",
            "id": self.id,
            "role": self.role,
            "content": self.content,
            "tool_calls": self.tool_calls,
            "tool_call_id": self.tool_call_id,
            "name": self.name,
            "is_error": self.is_error,
            "interrupted": self.interrupted,
            "created": self.created.isoformat(),
        }


class RunQuerySet(models.QuerySet):
    def active(self):
        return self.filter(status__in=Run.ACTIVE)

    def active_on(self, thread):
        """The thread's active run: one at most (a partial unique index). `thread` may be an
        OuterRef, for a subquery."""
        return self.active().filter(thread=thread)

    def leased_to(self, worker):
        return self.filter(status=Run.Status.RUNNING, lease_owner=worker)

    def lapsed(self, now):
        """Running runs whose lease ran out before `now`: their worker stopped renewing it."""
        return self.filter(status=Run.Status.RUNNING, lease_expires__lt=now)

    def unclaimed_since(self, moment):
        """Queued runs whose task has been waiting for a worker since before `moment`: made
        before it, and not enqueued again after it."""
        return self.filter(status=Run.Status.QUEUED, created__lt=moment).filter(
            Q(requeued=None) | Q(requeued__lt=moment)
        )

    def ended_between(self, start, end):
        return self.filter(status__in=Run.TERMINAL, finished__range=(start, end))


class Run(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        WAITING = "waiting"  # for a person's answer: no worker, no lease (runs.lifecycle)
        COMPLETED = "completed"
        FAILED = "failed"
        STOPPED = "stopped"

    class Trigger(models.TextChoices):
        MANUAL = "manual"
        API = "api"
        SCHEDULE = "schedule"
        WORKFLOW = "workflow"

    ACTIVE = (Status.QUEUED, Status.RUNNING, Status.WAITING)
    TERMINAL = (Status.COMPLETED, Status.FAILED, Status.STOPPED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="runs")
    thread = models.ForeignKey(Thread, models.CASCADE, related_name="runs")
    # what executes it: a name in runs.kinds, registered by the app that knows such runs, which
    # also keeps what a run of its kind needs beside this row (an agent, a workflow...)
    kind = models.CharField(max_length=20)
    retry_of = models.ForeignKey(
        "self", models.SET_NULL, null=True, blank=True, related_name="retries"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.API)
    error = models.TextField(blank=True)
    attempt = models.PositiveIntegerField(default=0)
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_expires = models.DateTimeField(null=True, blank=True)
    stop_requested = models.DateTimeField(null=True, blank=True)
    # when the reaper last sent a queued run's task again, its message being maybe lost
    requeued = models.DateTimeField(null=True, blank=True)
    # attempts whose worker was lost, each resumed by another (at most RUN_MAX_ATTEMPTS - 1)
    resumes = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True, db_index=True)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]
        indexes = [
            # the reaper's scan: running runs by lease expiry
            models.Index(fields=["status", "lease_expires"], name="run_status_lease"),
            models.Index(fields=["owner", "status"], name="run_owner_status"),
        ]
        constraints = [
            # At most one active run per thread, held by the database rather than by a
            # check-then-insert that two requests could both pass.
            models.UniqueConstraint(
                fields=["thread"],
                condition=Q(status__in=["queued", "running", "waiting"]),
                name="run_one_active_per_thread",
            )
        ]

    def __str__(self):
        return f"Run {self.id} ({self.status})"

    @property
    def channel(self):
        return f"run-{self.id}"

    @property
    def is_active(self):
        return self.status in self.ACTIVE


class InputRequest(models.Model):
    """What a waiting run asks a person: to approve a tool call, or to answer a question (the
    `ask_user` tool). The run waits in the database, so a wait survives every restart; the
    answer enqueues it again (runs.lifecycle.run_respond) and the loop reads the decision."""

    class Kind(models.TextChoices):
        APPROVAL = "approval"
        QUESTION = "question"

    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        DENIED = "denied"
        ANSWERED = "answered"
        CANCELLED = "cancelled"  # the run was stopped
        EXPIRED = "expired"  # no answer within RUN_WAIT_TIMEOUT

    run = models.ForeignKey(Run, models.CASCADE, related_name="requests")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    call = models.CharField(max_length=100, help_text="the id of the tool call it is about")
    name = models.CharField(max_length=200, help_text="the tool, as the model named it")
    arguments = models.TextField(blank=True, help_text="JSON text, as the model wrote them")
    question = models.TextField(blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    # the decision: the arguments approved (edited, or "" for the model's), a denial's
    # reason, a question's answer
    approved_arguments = models.TextField(blank=True)
    reason = models.TextField(blank=True)
    answer = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    resolved = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created", "id"]
        constraints = [
            models.UniqueConstraint(fields=["run", "call"], name="input_request_one_per_call")
        ]
        indexes = [models.Index(fields=["status", "created"], name="input_request_status")]

    def __str__(self):
        return f"{self.kind} {self.name} ({self.status})"

    def as_event(self):
        """The request as events and the API show it (`pending` on a run)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "call": self.call,
            "name": self.name,
            "arguments": self.arguments,
            "question": self.question,
        }

    def decision(self):
        """What `input.resolved` carries: the request and what became of it."""
        return {
            **self.as_event(),
            "status": self.status,
            "approved_arguments": self.approved_arguments,
            "reason": self.reason,
            "answer": self.answer,
        }


class FollowUpQuerySet(models.QuerySet):
    def pending(self):
        return self.filter(status=FollowUp.Status.PENDING)


class FollowUp(models.Model):
    """A message sent while its thread was busy (`if_busy: "enqueue"`), held until the thread's
    active run ends; then it starts its run (runs.lifecycle.follow_ups_start), its message
    saved at that moment, so the conversation reads in order. It is not a Run while it waits:
    the one-active-run-per-thread index and the per-user cap stay about runs."""

    class Status(models.TextChoices):
        PENDING = "pending"
        STARTED = "started"
        FAILED = "failed"  # its start was refused for good (`error` says why)
        CANCELLED = "cancelled"  # an interrupting start took the thread's queue

    thread = models.ForeignKey(Thread, models.CASCADE, related_name="follow_ups")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="follow_ups")
    kind = models.CharField(max_length=20)
    trigger = models.CharField(max_length=10, default="api")
    message = models.TextField()
    # what the kind keeps of the start's details, as JSON (runs.kinds.Kind.keep)
    details = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    # the run it started; null again if the queue refused that run (its start takes it back)
    run = models.OneToOneField(
        Run, models.SET_NULL, null=True, blank=True, related_name="follow_up"
    )
    # why its last start did not happen: the reaper's pass tries a pending one again
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)

    objects = FollowUpQuerySet.as_manager()

    class Meta:
        ordering = ["id"]  # the order they were sent in, and will start in
        indexes = [models.Index(fields=["thread", "status"], name="follow_up_thread_status")]

    def __str__(self):
        return f"Follow-up {self.pk} ({self.status})"

    @property
    def position(self):
        """1 for the next to start on its thread; None once it is no longer pending."""
        if self.status != self.Status.PENDING:
            return None
        return FollowUp.objects.pending().filter(thread_id=self.thread_id, pk__lte=self.pk).count()


class IdempotencyKey(models.Model):
    """A start made with an `Idempotency-Key` header (runs.idempotency): the key, per user and
    endpoint (`scope`), the hash of the body it came with, and the answer it got, replayed to
    the same key and body for IDEMPOTENCY_KEY_TTL (24 h), then purged (a beat entry). `answer`
    is empty while the first request is in progress: a claim the unique constraint makes one."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.CASCADE, related_name="idempotency_keys"
    )
    scope = models.CharField(max_length=200, help_text="the endpoint: method and path")
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of the canonical JSON body")
    # who holds an answer-less claim: a process that died holding one leaves it to be taken over
    claim = models.UUIDField(default=uuid.uuid4)
    run = models.ForeignKey(
        Run, models.SET_NULL, null=True, blank=True, related_name="idempotency_keys"
    )
    # the first answer's JSON as it was sent (jsonb would reorder its keys); "" until then
    answer = models.TextField(blank=True)
    created = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner", "scope", "key"], name="idempotency_key_unique")
        ]

    def __str__(self):
        return f"{self.scope} {self.key}"
