import hashlib
import hmac
import secrets
from datetime import timedelta

from django.conf import settings
from django.core.validators import URLValidator
from django.db import models, transaction
from django.utils import timezone

from runs.models import Thread

from .secrets import sealed

WEB_URL = URLValidator(schemes=["http", "https"], message="Enter an http:// or https:// URL.")


class Provider(models.Model):
    """Where an owner's agents get their model: an endpoint, its kind of API and its key. The
    key and the headers are kept encrypted (agents.secrets) and never shown again."""

    class Kind(models.TextChoices):
        OPENAI = "openai", "OpenAI-compatible chat completions"
        ANTHROPIC = "anthropic", "Anthropic Messages"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="providers")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.OPENAI)
    base_url = models.CharField(max_length=500, validators=[WEB_URL])
    api_key_sealed = models.TextField(blank=True, editable=False)
    headers_sealed = models.TextField(blank=True, editable=False)
    default_model = models.CharField(max_length=200, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    api_key = sealed("api_key_sealed")
    headers = sealed("headers_sealed", as_json=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="provider_name_unique")
        ]

    def __str__(self):
        return self.name


class McpServer(models.Model):
    """An MCP server whose tools an owner's agents may call. Users add streamable HTTP servers;
    stdio servers start a command on the worker machine, so only an administrator adds them.
    `tools` caches the server's list, as the model sees it (agents.tools.mcp)."""

    class Transport(models.TextChoices):
        STREAMABLE_HTTP = "streamable-http"
        STDIO = "stdio"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="mcp_servers")
    name = models.CharField(max_length=40, help_text="letters, digits, _ and -; names its tools")
    transport = models.CharField(
        max_length=20, choices=Transport.choices, default=Transport.STREAMABLE_HTTP
    )
    url = models.CharField(
        max_length=500, blank=True, validators=[WEB_URL], help_text="streamable HTTP: its endpoint"
    )
    command = models.JSONField(
        default=list, blank=True, help_text='stdio: the command and its arguments, ["npx", "…"]'
    )
    headers_sealed = models.TextField(blank=True, editable=False)
    enabled = models.BooleanField(default=True)
    allowed_tools = models.JSONField(
        default=list, blank=True, help_text="the server's tools agents may call; empty: all"
    )
    tools = models.JSONField(default=list, blank=True, editable=False)
    tools_refreshed = models.DateTimeField(null=True, blank=True, editable=False)
    tools_error = models.TextField(blank=True, editable=False)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    headers = sealed("headers_sealed", as_json=True)

    class Meta:
        ordering = ["id"]
        verbose_name = "MCP server"
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="mcp_server_name_unique")
        ]

    def __str__(self):
        return self.name


class Agent(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="agents")
    name = models.CharField(max_length=100)
    instructions = models.TextField(blank=True)
    provider = models.ForeignKey(
        Provider, models.PROTECT, null=True, blank=True, related_name="agents",
        help_text="empty: the default provider (LLM_BASE_URL, LLM_API_KEY)",
    )  # fmt: skip
    model = models.CharField(
        max_length=200, default="demo", blank=True,
        help_text='"demo", a model name, or empty for the provider\'s default model',
    )  # fmt: skip
    temperature = models.FloatField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True, help_text="of output")
    tools = models.JSONField(default=list, blank=True, help_text="names of the tools it may call")
    mcp_servers = models.ManyToManyField(McpServer, blank=True, related_name="agents")
    approve_tools = models.JSONField(
        default=list, blank=True,
        help_text='tools (as the model names them) a person approves each call of; "*": all',
    )  # fmt: skip
    config = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="agent_name_unique")]

    def __str__(self):
        return self.name

    def needs_approval(self, tool):
        return tool in self.approve_tools or "*" in self.approve_tools

    @property
    def model_label(self):
        """The model it answers with and whose it is, as pages show it: "gpt-4o · OpenAI"."""
        model = self.model or (self.provider.default_model if self.provider else "")
        return f"{model} · {self.provider.name if self.provider else 'default provider'}"


class ThreadAgent(models.Model):
    """The agent a thread talks to. Threads belong to the run engine, which knows no agents."""

    thread = models.OneToOneField(
        "runs.Thread", models.CASCADE, primary_key=True, related_name="agent_link"
    )
    agent = models.ForeignKey(
        Agent, models.SET_NULL, null=True, blank=True, related_name="thread_links"
    )

    def __str__(self):
        return f"{self.thread}: {self.agent}"


class RunAgent(models.Model):
    """The agent a run used: the one that answered an agent run; for a workflow run, the one
    its agent steps use unless they name another."""

    run = models.OneToOneField(
        "runs.Run", models.CASCADE, primary_key=True, related_name="agent_link"
    )
    agent = models.ForeignKey(
        Agent, models.SET_NULL, null=True, blank=True, related_name="run_links"
    )

    def __str__(self):
        return f"{self.run}: {self.agent}"


def create_thread(*, owner, agent, **fields):
    """A new thread of `owner`'s that talks to `agent`."""
    with transaction.atomic():
        thread = Thread.objects.create(owner=owner, **fields)
        thread.agent_link = ThreadAgent.objects.create(thread=thread, agent=agent)
    return thread


def agent_of(thread_or_run):
    """The agent a thread or a run is linked to, or None: never linked, or the agent deleted."""
    link = getattr(thread_or_run, "agent_link", None)  # a missing link is an AttributeError
    return link and link.agent


class ApiKey(models.Model):
    """A user's API key, `relay_<prefix>_<secret>`. Only its SHA-256 digest is kept: the key is
    shown once, when it is made. The prefix is public (lists show it) and finds the row.

    No slow KDF: that protects guessable passwords, while a key is 256 random bits, so a
    digest that leaks cannot be reversed, and a request pays one hash, not a tenth of a
    second."""

    SCHEME = "relay"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    digest = models.CharField(max_length=64, editable=False)
    created = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created", "-id"]
        verbose_name = "API key"

    def __str__(self):
        return f"{self.name or 'key'} ({self.SCHEME}_{self.prefix}_…)"

    @staticmethod
    def hash(key):
        return hashlib.sha256(key.encode()).hexdigest()

    @classmethod
    def issue(cls, *, owner, name=""):
        """A new key for `owner`: the saved row and the key, which nothing can show again."""
        prefix = secrets.token_hex(8)  # 64 bits: two keys sharing one is not a worry
        key = f"{cls.SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
        return cls.objects.create(owner=owner, name=name, prefix=prefix, digest=cls.hash(key)), key

    @classmethod
    def find(cls, key):
        """The active user's key `key` is, or None: an indexed lookup by the prefix, then a
        constant-time comparison of digests, so the time taken tells nothing of the secret."""
        scheme, _, rest = key.partition("_")
        prefix, _, secret = rest.partition("_")
        if scheme != cls.SCHEME or not prefix or not secret:
            return None
        found = cls.objects.select_related("owner").filter(prefix=prefix).first()
        if found is None or not hmac.compare_digest(found.digest, cls.hash(key)):
            return None
        return found if found.owner.is_active else None

    def touch(self):
        """Record a use, at most once a minute, so a busy client does not write on every call."""
        now = timezone.now()
        if self.last_used is None or now - self.last_used > timedelta(minutes=1):
            ApiKey.objects.filter(pk=self.pk).update(last_used=now)
            self.last_used = now
