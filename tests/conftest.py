import time

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from agents import stream
from agents.models import Run

from live import Live


@pytest.fixture(scope="session", autouse=True)
def _clean_redis():
    """The tests own their Redis database (db 15, see settings.TESTING): start it empty."""
    stream.client().flushdb()


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-password")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", password="bob-password")


def client_for(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def alice_api(alice):
    return client_for(alice)


@pytest.fixture
def bob_api(bob):
    return client_for(bob)


@pytest.fixture(scope="session")
def live(django_db_setup, django_db_blocker, tmp_path_factory):
    with django_db_blocker.unblock():
        # Short leases so a killed worker's run is reaped within seconds, not a minute.
        processes = Live(
            tmp_path_factory.mktemp("live"),
            RUN_LEASE_SECONDS="3",
            RUN_HEARTBEAT_SECONDS="1",
            RUN_REAPER_SECONDS="1",
            LLM_BASE_URL="http://127.0.0.1:9/v1",  # nothing listens: a model that cannot be reached
        )
        processes.start_web()
        processes.start_worker()
    yield processes
    processes.stop_all()


@pytest.fixture
def live_api(live, transactional_db, alice):
    """Alice's token, for HTTP calls to the live web process."""
    return {"Authorization": f"Bearer {Token.objects.create(user=alice).key}"}


def wait_for(predicate, timeout=20, interval=0.05, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


def wait_for_status(run_id, statuses, timeout=20):
    statuses = {statuses} if isinstance(statuses, str) else set(statuses)

    def reached():
        run = Run.objects.get(pk=run_id)
        return run if run.status in statuses else None

    return wait_for(reached, timeout, message=f"run {run_id} to be {statuses}")
