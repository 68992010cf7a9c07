"""What both benchmarks need: Django on a database and Redis of their own, a user with a key,
and real web and worker processes (the same harness as the end-to-end tests)."""

import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DATABASE_URL", f"sqlite:///{ROOT / 'var' / 'bench.sqlite3'}")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/14")
os.environ.setdefault("RUN_MAX_ACTIVE_PER_USER", "100000")
os.environ.setdefault("SSE_MAX_STREAMS_PER_USER", "100000")  # one user opens every stream
os.environ.setdefault("LOG_LEVEL", "WARNING")
# as in production: DEBUG keeps every query in memory and wraps every cursor
os.environ.setdefault("DEBUG", "0")
os.environ.setdefault("SECRET_KEY", "relay-benchmarks-only")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402

from agents.models import ApiKey  # noqa: E402
from runs import stream  # noqa: E402

from live import Live  # noqa: E402


def prepare():
    """Migrate, empty the benchmark's Redis database, and return (user, auth headers, Live)."""
    call_command("migrate", verbosity=0)
    stream.client().flushdb()
    user = get_user_model().objects.filter(username="bench").first()
    if user is None:
        user = get_user_model().objects.create_user("bench", password="bench")
    _, key = ApiKey.issue(owner=user, name="bench")
    live = Live(Path(tempfile.mkdtemp(prefix="relay-bench-")))
    return user, {"Authorization": f"Bearer {key}"}, live


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def describe(values, unit="ms"):
    return (
        f"median {statistics.median(values):.1f} {unit}, p90 {percentile(values, 90):.1f} {unit},"
        f" min {min(values):.1f}, max {max(values):.1f} (n={len(values)})"
    )
