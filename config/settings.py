"""Relay settings: read from the environment, with defaults that let a fresh checkout run."""

import os
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("RELAY_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(exist_ok=True)


def env(name, default=None):
    return os.environ.get(name, default)


def env_bool(name, default=False):
    return env(name, str(default)).lower() in ("1", "true", "yes", "on")


def env_int(name, default):
    return int(env(name, default))


def env_float(name, default):
    return float(env(name, default))


def env_list(name, default=""):
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", True)
SECRET_KEY = env("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = "insecure-development-key-set-SECRET_KEY-in-production"
SECRET_KEY_FALLBACKS = env_list("SECRET_KEY_FALLBACKS")  # old keys, while rotating (deploy.md)
# Fernet keys for the secrets kept in the database (providers' API keys, headers); empty: keys
# derived from SECRET_KEY and its fallbacks. The first encrypts, all decrypt (agents/secrets.py).
SECRETS_ENCRYPTION_KEYS = env_list("SECRETS_ENCRYPTION_KEYS")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
# HTTPS in production, behind a TLS proxy (deploy/relay.env.example turns these on; off here so
# http://localhost works). uvicorn takes the scheme from X-Forwarded-Proto sent from 127.0.0.1.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = env_list("SECURE_REDIRECT_EXEMPT")  # path regexes, no leading /
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_eventstream",
    "django_celery_beat",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # the docs page's assets, served from here (no CDN)
    "runs",
    "agents",
    "workflows",
    "scheduling",
    "usage",
    "webhooks",
    "ops",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: SQLite under var/ unless DATABASE_URL names another (postgresql://... uses psycopg 3).
DATABASES = {
    "default": dj_database_url.parse(
        env("DATABASE_URL", f"sqlite:///{VAR_DIR / 'relay.sqlite3'}"), conn_max_age=0
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Workers write from many threads: wait for the lock instead of failing, take the write lock
    # at BEGIN so two writers never deadlock upgrading a read lock, and let readers run beside
    # the writer (WAL).
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # The test database is a file, so the worker and web processes the tests start can open it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
elif env_int("DB_POOL_SIZE", 20):
    # Code here closes its connection after each step (a worker thread between model calls, an
    # event stream once authorized): with the pool that returns it for reuse instead of making
    # PostgreSQL start a new backend each time. Checked on checkout, so a connection that died
    # with a database restart is replaced, not handed out.
    DATABASES["default"]["OPTIONS"] = {
        "pool": {"min_size": 2, "max_size": env_int("DB_POOL_SIZE", 20), "timeout": 30}
    }
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
# Failed logins (pages, admin) and failed API keys: past the limit in the window, for one
# username or from one client address, refused (429 on the API) until the window has passed.
AUTH_FAILURE_LIMIT = env_int("AUTH_FAILURE_LIMIT", 10)
AUTH_FAILURE_WINDOW = env_int("AUTH_FAILURE_WINDOW", 15 * 60)  # seconds
API_KEYS_MAX_PER_USER = env_int("API_KEYS_MAX_PER_USER", 50)  # keys one user may hold
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chats"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
# WhiteNoise serves them from the web process; straight from the apps and static/ when nobody
# ran collectstatic, so a checkout works as it is.
WHITENOISE_USE_FINDERS = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    # they log every listener, every HTTP request to a model or an MCP server, at INFO
    "loggers": {
        name: {"level": "WARNING"}
        for name in ("django_eventstream", "httpx2", "httpx", "mcp", "openai", "anthropic")
    },
}

# Redis: the Celery broker, the run event logs, live fan-out and stop flags.
# (the test session starts a redis-server of its own: tests/conftest.py)
REDIS_URL = env("REDIS_URL", "redis://127.0.0.1:6379/0")
_redis = urlparse(REDIS_URL)
EVENTSTREAM_REDIS = {
    "host": _redis.hostname or "127.0.0.1",
    "port": _redis.port or 6379,
    "db": int(_redis.path.lstrip("/") or 0),
    "password": _redis.password,
}
EVENTSTREAM_STORAGE_CLASS = "runs.stream.StreamStorage"
REDIS_POOL_SIZE = env_int("REDIS_POOL_SIZE", 50)  # connections per process

# Runs.
RUN_MAX_ACTIVE_PER_USER = env_int("RUN_MAX_ACTIVE_PER_USER", 10)
# messages queued on a busy thread (`if_busy: "enqueue"`), each started when the run before ends
RUN_FOLLOW_UPS_MAX = env_int("RUN_FOLLOW_UPS_MAX", 5)
RUN_MESSAGE_MAX_BYTES = env_int("RUN_MESSAGE_MAX_BYTES", 32 * 1024)  # and workflow renders
RUN_MAX_TURNS = env_int("RUN_MAX_TURNS", 8)
# input + output tokens a user's runs may use per UTC day (0: no budget); a user's own budget,
# set in the admin, overrides it (usage/models.py)
RUN_DAILY_TOKEN_BUDGET = env_int("RUN_DAILY_TOKEN_BUDGET", 0)
# attempts a run gets: one whose worker is lost is resumed by another until it has had them all
RUN_MAX_ATTEMPTS = env_int("RUN_MAX_ATTEMPTS", 3)
# seconds a run waits for a person's answer (an approval, a question) before it ends failed
RUN_WAIT_TIMEOUT = env_int("RUN_WAIT_TIMEOUT", 24 * 3600)
RUN_TIME_LIMIT = env_int("RUN_TIME_LIMIT", 15 * 60)  # seconds a run may take
# A killed worker's run ends within lease + reaper period (25 s, under the 30 s promised); a
# lease outlives three missed renewals (a 15 s stall), each renewal one UPDATE per process.
RUN_LEASE_SECONDS = env_float("RUN_LEASE_SECONDS", 20)  # a run whose lease lapses is reaped
RUN_HEARTBEAT_SECONDS = env_float("RUN_HEARTBEAT_SECONDS", 5)  # how often workers renew leases
RUN_REAPER_SECONDS = env_float("RUN_REAPER_SECONDS", 5)  # how often beat sends the reaper
RUN_REQUEUE_SECONDS = env_float("RUN_REQUEUE_SECONDS", 120)  # unclaimed that long: enqueue again
RUN_INTERRUPT_WAIT = env_float("RUN_INTERRUPT_WAIT", 5)  # how long "interrupt" waits for a stop
RUN_DELTA_SECONDS = env_float("RUN_DELTA_SECONDS", 0.05)  # message.delta coalescing window
RUN_EVENTS_MAXLEN = env_int("RUN_EVENTS_MAXLEN", 10_000)  # events kept per run log
RUN_EVENTS_RETENTION = env_int("RUN_EVENTS_RETENTION", 3600)  # seconds a log lives after its run
RUN_EVENTS_MAX_BYTES = env_int("RUN_EVENTS_MAX_BYTES", 1024 * 1024)  # a run log's cap (oldest go)
RUN_EVENTS_RETAINED_PER_USER = env_int("RUN_EVENTS_RETAINED_PER_USER", 20)  # ended runs' logs kept
# Idempotency-Key on starts (runs/idempotency.py): seconds a key's answer is replayed (then
# purged), seconds a request waits for the answer of one in progress with its key (then 409),
# seconds after which a claim with no run is taken to be a dead process's, and taken over.
IDEMPOTENCY_KEY_TTL = env_int("IDEMPOTENCY_KEY_TTL", 24 * 3600)
IDEMPOTENCY_KEY_WAIT = env_float("IDEMPOTENCY_KEY_WAIT", 10)
IDEMPOTENCY_KEY_STALE = env_float("IDEMPOTENCY_KEY_STALE", 300)
RUN_BULK_MAX = env_int("RUN_BULK_MAX", 100)  # runs one bulk stop or retry acts on
SSE_KEEPALIVE_SECONDS = env_float("SSE_KEEPALIVE_SECONDS", 15)
SSE_MAX_STREAMS_PER_USER = env_int("SSE_MAX_STREAMS_PER_USER", 50)  # open streams (429 above)
# Pushpin's control URL (e.g. http://127.0.0.1:5561): GRIP mode, docs/deploy.md
GRIP_URL = env("GRIP_URL", "")
if GRIP_URL and not parse_qs(urlparse(GRIP_URL).query).get("verify-key"):
    # without it, any request with a Grip-Sig header would pass for one Pushpin forwarded
    raise ImproperlyConfigured(
        "GRIP_URL must carry Pushpin's signing key (its sig_key) to verify what it forwards: "
        "http://127.0.0.1:5561?verify-iss=pushpin&verify-key=<sig_key>"
    )

WORKFLOW_MAX_BYTES = env_int("WORKFLOW_MAX_BYTES", 64 * 1024)  # largest workflow definition
SCHEDULES_MAX_PER_USER = env_int("SCHEDULES_MAX_PER_USER", 100)  # each one beat loads and fires

# Models and tools.
LLM_BASE_URL = env("LLM_BASE_URL", "https://api.openai.com/v1")
LLM_API_KEY = env("LLM_API_KEY", "")
LLM_MODEL = env("LLM_MODEL", "demo")
LLM_TIMEOUT = env_float("LLM_TIMEOUT", 120)
# Retries of a model call that failed before any output (no connection, 429, 5xx)
LLM_MAX_RETRIES = env_int("LLM_MAX_RETRIES", 3)
PROVIDERS_MAX_PER_USER = env_int("PROVIDERS_MAX_PER_USER", 20)
# A user's provider may point at a private address (an Ollama on the LAN) only when this is on:
# otherwise a provider is a way to make the worker POST to internal services.
PROVIDERS_ALLOW_PRIVATE = env_bool("PROVIDERS_ALLOW_PRIVATE", False)
MCP_SERVERS_MAX_PER_USER = env_int("MCP_SERVERS_MAX_PER_USER", 20)
MCP_SERVERS_MAX_PER_AGENT = env_int("MCP_SERVERS_MAX_PER_AGENT", 10)
MCP_TOOLS_MAX_PER_SERVER = env_int("MCP_TOOLS_MAX_PER_SERVER", 100)  # more are left out
MCP_TOOLS_TTL = env_int("MCP_TOOLS_TTL", 300)  # seconds a server's tool list is used unrefreshed
TOOLS_HTTP_ALLOWED_HOSTS = env_list("TOOLS_HTTP_ALLOWED_HOSTS")
TOOLS_HTTP_ALLOW_PRIVATE = env_bool("TOOLS_HTTP_ALLOW_PRIVATE", False)
# MCP servers over streamable HTTP: private addresses (127.0.0.1, 10.x, ...) only when allowed;
# the seconds a tool call may take unless its server says otherwise, and a listing of tools.
MCP_ALLOW_PRIVATE = env_bool("MCP_ALLOW_PRIVATE", False)
MCP_TIMEOUT = env_float("MCP_TIMEOUT", 30)
MCP_LIST_TIMEOUT = env_float("MCP_LIST_TIMEOUT", 10)
# Tool calls in progress at once per worker process, for one user and for one run (a call that
# timed out counts until its tool returns); beyond them a call fails at once with the reason.
TOOLS_MAX_CALLS_PER_USER = env_int("TOOLS_MAX_CALLS_PER_USER", 16)
TOOLS_MAX_CALLS_PER_RUN = env_int("TOOLS_MAX_CALLS_PER_RUN", 4)
TOOLS_MAX_CALLS_PER_TURN = env_int("TOOLS_MAX_CALLS_PER_TURN", 16)  # more get an error result

# Webhooks (docs/webhooks.md): endpoints per user; private addresses (127.0.0.1, 10.x, ...) only
# when allowed; seconds an attempt may take (connection and whole answer); the delays between
# attempts (seconds, comma separated: 8 attempts over about 27 hours by default, as Svix does);
# how often beat sweeps the due ones; a task sent that long ago and not attempted is sent again.
WEBHOOKS_MAX_PER_USER = env_int("WEBHOOKS_MAX_PER_USER", 20)
WEBHOOKS_ALLOW_PRIVATE = env_bool("WEBHOOKS_ALLOW_PRIVATE", False)
WEBHOOKS_TIMEOUT = env_float("WEBHOOKS_TIMEOUT", 10)
WEBHOOKS_RETRY_SCHEDULE = env_list("WEBHOOKS_RETRY_SCHEDULE", "5,300,1800,7200,18000,36000,36000")
try:
    WEBHOOKS_RETRY_SCHEDULE = [float(delay) for delay in WEBHOOKS_RETRY_SCHEDULE]
except ValueError:
    raise ImproperlyConfigured(
        "WEBHOOKS_RETRY_SCHEDULE must be seconds separated by commas, such as 5,300,1800"
    ) from None
if any(not 0 <= delay <= 7 * 86400 for delay in WEBHOOKS_RETRY_SCHEDULE):
    raise ImproperlyConfigured("WEBHOOKS_RETRY_SCHEDULE's delays must be 0 to 604800 seconds")
# seconds a rotated secret still signs beside the new one (a second signature)
WEBHOOKS_ROTATION_GRACE = env_int("WEBHOOKS_ROTATION_GRACE", 24 * 3600)
WEBHOOKS_SWEEP_SECONDS = env_float("WEBHOOKS_SWEEP_SECONDS", 5)
WEBHOOKS_REQUEUE_SECONDS = env_float("WEBHOOKS_REQUEUE_SECONDS", 60)
WEBHOOKS_DELIVERIES_KEPT = env_int("WEBHOOKS_DELIVERIES_KEPT", 100)  # ended ones, per endpoint
WEBHOOKS_PENDING_MAX = env_int("WEBHOOKS_PENDING_MAX", 1000)  # pending ones, per endpoint
WEBHOOKS_MAX_PAYLOAD_BYTES = env_int("WEBHOOKS_MAX_PAYLOAD_BYTES", 64 * 1024)
WEBHOOKS_RESPONSE_MAX_BYTES = env_int("WEBHOOKS_RESPONSE_MAX_BYTES", 4096)  # read of an answer

# Celery: runs are acknowledged when they end, and a worker holds many at once in threads,
# since they spend their life waiting on the model.
CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": RUN_TIME_LIMIT + 3600}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_DEFAULT_QUEUE = "default"
# webhooks on a queue of their own, so slow receivers never delay runs
CELERY_TASK_ROUTES = {
    "runs.tasks.execute_run_task": {"queue": "runs"},
    "webhooks.tasks.deliver_webhook_task": {"queue": "webhooks"},
    "webhooks.tasks.sweep_webhooks_task": {"queue": "webhooks"},
}
CELERY_WORKER_POOL = env("WORKER_POOL", "threads")
CELERY_WORKER_CONCURRENCY = env_int("WORKER_CONCURRENCY", 100)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULER = "scheduling.beat:Scheduler"  # DatabaseScheduler, safe against deletes
CELERY_BEAT_SCHEDULE = {
    "reap-runs": {"task": "runs.tasks.reap_runs_task", "schedule": RUN_REAPER_SECONDS},
    "purge-idempotency-keys": {"task": "runs.tasks.purge_idempotency_keys_task", "schedule": 600},
    "sweep-webhooks": {
        "task": "webhooks.tasks.sweep_webhooks_task",
        "schedule": WEBHOOKS_SWEEP_SECONDS,
    },
}
CELERY_TIMEZONE = "UTC"

# Metrics for Prometheus (runs/metrics.py records them, ops/ serves them at /metrics). Off: no
# process records anything (the scrape-time gauges are still served). /metrics answers 404 until
# METRICS_TOKEN is set; then it wants `Authorization: Bearer <METRICS_TOKEN>`.
METRICS_ENABLED = env_bool("METRICS_ENABLED", True)
METRICS_TOKEN = env("METRICS_TOKEN", "")
METRICS_QUEUES = env_list("METRICS_QUEUES", "runs,default,webhooks")  # relay_queue_length's
# distinct values a capped label (a tool's name) may take; the others are counted as "other"
METRICS_LABEL_VALUES_MAX = env_int("METRICS_LABEL_VALUES_MAX", 50)

# Deepest nesting of arrays and objects in a request's JSON (400 beyond it).
JSON_MAX_DEPTH = env_int("JSON_MAX_DEPTH", 32)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "agents.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "runs.http.Pagination",
    "EXCEPTION_HANDLER": "runs.http.exception_handler",
    # JSON only, and only what PostgreSQL can store (runs/parsers.py)
    "DEFAULT_PARSER_CLASSES": ["runs.parsers.JSONParser"],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",  # the test client speaks as the API does
    "DEFAULT_SCHEMA_CLASS": "runs.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"]
    + (["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
}

# The OpenAPI schema (/api/schema/) and its docs page (/api/docs/): runs/openapi.py.
SPECTACULAR_SETTINGS = {
    "TITLE": "Relay API",
    "DESCRIPTION": "Agents, threads, runs, workflows and schedules; run events over SSE.",
    "VERSION": "1",
    "SCHEMA_PATH_PREFIX": "/api/",
    "OAS_VERSION": "3.1.0",  # JSON Schema 2020-12: the event stream's data can be described
    "COMPONENT_SPLIT_REQUEST": True,  # request bodies without the read-only fields
    # a run's status, in runs and in the bulk actions' filter: one enum
    "ENUM_NAME_OVERRIDES": {"RunStatusEnum": "runs.models.Run.Status"},
    "SERVE_INCLUDE_SCHEMA": False,
    # Public: the schema says no more than the README, and holds nothing of any user's.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # Swagger UI would otherwise fetch a badge from validator.swagger.io for a non-local host
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "runs.openapi.complete_schema",
        "usage.openapi.document_budget",
    ],
}
