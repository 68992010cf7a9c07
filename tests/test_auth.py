"""Logging in and API keys: the demo user, keys kept only as digests, the keys API and admin,
and the throttle on failed logins and failed API authentication."""

import io
import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from rest_framework.test import APIClient

from agents.models import ApiKey
from runs import stream

from conftest import wait_for

pytestmark = pytest.mark.django_db

ADDRESS = "198.51.100.7"  # the client the throttle tests are: no other test's failures count


@pytest.fixture(autouse=True)
def _no_failures():
    def forget():
        redis = stream.client()
        for key in redis.scan_iter("relay:auth-failures:*"):
            redis.delete(key)

    forget()
    yield
    forget()


def setup_demo(**options):
    out = io.StringIO()
    call_command("setup_demo", stdout=out, **options)
    return out.getvalue()


def printed(pattern, text):
    found = re.search(pattern, text)
    assert found, text
    return found[1]


def api_with(key, address=ADDRESS):
    return APIClient(REMOTE_ADDR=address, HTTP_AUTHORIZATION=f"Bearer {key}")


# The demo user


def test_it_makes_the_demo_user_demo_demo_when_debug_is_on(settings):
    settings.DEBUG = True
    out = setup_demo()
    user = get_user_model().objects.get(username="demo")
    assert user.is_superuser
    assert user.check_password("demo")
    assert "http://127.0.0.1:8000/  as demo / demo" in out
    key = printed(r"API key: +(\S+)", out)
    assert api_with(key).get("/api/threads/").status_code == 200


def test_it_gives_the_demo_user_a_strong_random_password_printed_once_when_debug_is_off(settings):
    settings.DEBUG = False
    out = setup_demo()
    user = get_user_model().objects.get(username="demo")
    password = printed(r"as demo / (\S+)", out)
    assert len(password) >= 20
    assert user.check_password(password)
    assert not user.check_password("demo")
    again = setup_demo()
    assert password not in again
    user.refresh_from_db()
    assert user.check_password(password)  # an existing user keeps the password it has


def test_it_replaces_the_demo_password_of_an_existing_user_when_debug_is_off(settings):
    settings.DEBUG = True
    setup_demo()
    settings.DEBUG = False
    out = setup_demo()
    user = get_user_model().objects.get(username="demo")
    assert not user.check_password("demo")
    assert user.check_password(printed(r"as demo / (\S+)", out))


def test_it_refuses_a_weak_demo_password_when_debug_is_off(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="too short"):
        setup_demo(password="demo")
    assert not get_user_model().objects.filter(username="demo").exists()


def test_it_prints_a_new_key_each_time_and_revokes_the_one_before(settings):
    settings.DEBUG = True
    first = printed(r"API key: +(\S+)", setup_demo())
    second = printed(r"API key: +(\S+)", setup_demo())
    assert first != second
    assert api_with(first).get("/api/threads/").status_code == 401
    assert api_with(second).get("/api/threads/").status_code == 200


# Keys


def test_it_keeps_only_a_digest_of_a_key(alice):
    out = io.StringIO()
    call_command("create_api_key", "alice", "--name", "laptop", stdout=out)
    secret = out.getvalue().strip().splitlines()[-1]
    key = ApiKey.objects.get(owner=alice)
    assert key.name == "laptop"
    assert secret.startswith(f"relay_{key.prefix}_")
    stored = " ".join(str(value) for value in ApiKey.objects.values().get().values())
    assert secret not in stored
    assert secret.rpartition("_")[2] not in stored
    assert api_with(secret).get("/api/threads/").status_code == 200


def test_it_refuses_to_make_a_key_for_an_unknown_user():
    with pytest.raises(CommandError, match="No user named 'nobody'"):
        call_command("create_api_key", "nobody", stdout=io.StringIO())


def test_it_accepts_token_and_bearer_and_refuses_wrong_keys(alice):
    _, secret = ApiKey.issue(owner=alice)
    for header in [f"Bearer {secret}", f"Token {secret}"]:
        client = APIClient(REMOTE_ADDR=ADDRESS, HTTP_AUTHORIZATION=header)
        assert client.get("/api/threads/").status_code == 200
    wrong = secret[:-4] + ("aaaa" if not secret.endswith("aaaa") else "bbbb")  # the right prefix
    for bad in [wrong, "relay_nope_nope", "nope", secret + "x"]:
        assert api_with(bad).get("/api/threads/").status_code == 401


def test_it_refuses_a_key_of_an_inactive_user(alice):
    _, secret = ApiKey.issue(owner=alice)
    alice.is_active = False
    alice.save()
    assert api_with(secret).get("/api/threads/").status_code == 401


def test_it_lists_creates_and_revokes_own_keys(alice):
    session = APIClient()
    session.force_login(alice)
    r = session.post("/api/keys/", {"name": "ci"}, format="json")
    assert r.status_code == 201, r.data
    secret = r.data["key"]
    assert secret.startswith(f"relay_{r.data['prefix']}_")
    assert r.data["last_used"] is None
    assert api_with(secret).get("/api/threads/").status_code == 200
    [listed] = session.get("/api/keys/").data["results"]
    assert set(listed) == {"id", "name", "prefix", "created", "last_used"}
    assert listed["name"] == "ci"
    assert listed["last_used"] is not None
    assert secret not in str(session.get(f"/api/keys/{listed['id']}/").data)
    assert session.delete(f"/api/keys/{listed['id']}/").status_code == 204
    assert api_with(secret).get("/api/threads/").status_code == 401
    assert session.get("/api/keys/").data["results"] == []


def test_it_hides_other_users_keys(alice, bob):
    key, _ = ApiKey.issue(owner=alice, name="mine")
    _, bob_secret = ApiKey.issue(owner=bob)
    bob_api = api_with(bob_secret)
    assert [k["name"] for k in bob_api.get("/api/keys/").data["results"]] == [""]
    assert bob_api.get(f"/api/keys/{key.pk}/").status_code == 404
    assert bob_api.delete(f"/api/keys/{key.pk}/").status_code == 404
    assert ApiKey.objects.filter(pk=key.pk).exists()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"name": "x" * 101}, "no more than 100 characters"),
        ({"name": "a\u0000b"}, "Null characters are not allowed"),
        ({"name": "a\ud800b"}, "Lone surrogates"),
        ({"name": ["a"]}, "Not a valid string"),
    ],
)
def test_it_refuses_a_bad_key_name(alice, body, reason):
    session = APIClient()
    session.force_login(alice)
    r = session.post("/api/keys/", json.dumps(body), content_type="application/json")
    assert r.status_code == 400
    assert reason in str(r.data["name"])
    assert not ApiKey.objects.exists()


def test_it_caps_keys_per_user(alice, settings):
    settings.API_KEYS_MAX_PER_USER = 2
    session = APIClient()
    session.force_login(alice)
    for _ in range(2):
        assert session.post("/api/keys/", {}, format="json").status_code == 201
    r = session.post("/api/keys/", {}, format="json")
    assert r.status_code == 429
    assert r.data["code"] == "too_many_keys"
    assert ApiKey.objects.count() == 2


def test_it_shows_keys_in_the_admin_without_their_secret(alice, django_user_model):
    admin = django_user_model.objects.create_superuser("root", password="root-password-1")
    key, secret = ApiKey.issue(owner=alice, name="laptop")
    client = Client()
    client.force_login(admin)
    listing = client.get("/admin/agents/apikey/").content.decode()
    assert "laptop" in listing
    assert key.prefix in listing
    page = client.get(f"/admin/agents/apikey/{key.pk}/change/").content.decode()
    assert key.prefix in page
    for text in (listing, page):
        assert secret not in text
        assert key.digest not in text
    assert client.get("/admin/agents/apikey/add/").status_code == 403
    assert client.get("/admin/authtoken/").status_code == 404


# The throttle


def log_in(client, username, password, url="/login/"):
    return client.post(url, {"username": username, "password": password})


def test_it_refuses_the_right_password_after_too_many_wrong_ones(alice, settings):
    settings.AUTH_FAILURE_LIMIT = 10
    client = Client(REMOTE_ADDR=ADDRESS)
    for _ in range(30):
        r = log_in(client, "alice", "wrong")
        assert r.status_code == 200
    r = log_in(client, "alice", "alice-password")
    assert r.status_code == 200, "logged in after 30 wrong passwords"
    assert "Too many failed logins" in r.content.decode()
    assert "in 15 minutes" in r.content.decode()
    assert "_auth_user_id" not in client.session


def test_it_lets_the_right_password_in_once_the_window_has_passed(alice, settings):
    settings.AUTH_FAILURE_LIMIT = 1
    settings.AUTH_FAILURE_WINDOW = 1
    client = Client(REMOTE_ADDR=ADDRESS)
    log_in(client, "alice", "wrong")
    assert "Too many failed logins" in log_in(client, "alice", "alice-password").content.decode()
    wait_for(
        lambda: log_in(client, "alice", "alice-password").status_code == 302,
        timeout=5,
        interval=0.2,
        message="the window to pass",
    )


def test_it_counts_failures_per_username_and_per_address(alice, bob, settings):
    settings.AUTH_FAILURE_LIMIT = 3
    for address in ["203.0.113.1", "203.0.113.2", "203.0.113.3"]:
        log_in(Client(REMOTE_ADDR=address), "alice", "wrong")
    elsewhere = Client(REMOTE_ADDR="203.0.113.4")
    assert "Too many failed logins" in log_in(elsewhere, "alice", "alice-password").content.decode()
    assert log_in(elsewhere, "bob", "bob-password").status_code == 302  # bob is not locked
    one = Client(REMOTE_ADDR=ADDRESS)
    for username in ["x", "y", "z"]:
        log_in(one, username, "wrong")
    assert "Too many failed logins" in log_in(one, "bob", "bob-password").content.decode()


def test_it_forgets_a_users_failures_when_they_log_in(alice, settings):
    settings.AUTH_FAILURE_LIMIT = 3
    client = Client(REMOTE_ADDR="203.0.113.9")
    log_in(client, "alice", "wrong")
    log_in(client, "alice", "wrong")
    assert log_in(client, "alice", "alice-password").status_code == 302
    for address in ["203.0.113.10", "203.0.113.11"]:
        log_in(Client(REMOTE_ADDR=address), "alice", "wrong")
    assert log_in(Client(REMOTE_ADDR="203.0.113.12"), "alice", "alice-password").status_code == 302


def test_it_throttles_the_admin_login(django_user_model, settings):
    settings.AUTH_FAILURE_LIMIT = 5
    django_user_model.objects.create_superuser("root", password="root-password-1")
    client = Client(REMOTE_ADDR=ADDRESS)
    for _ in range(30):
        log_in(client, "root", "wrong", url="/admin/login/")
    r = log_in(client, "root", "root-password-1", url="/admin/login/")
    assert r.status_code == 200
    assert "Too many failed logins" in r.content.decode()
    assert client.get("/admin/").status_code == 302  # not logged in


def test_it_answers_429_after_too_many_wrong_api_keys(alice, settings):
    settings.AUTH_FAILURE_LIMIT = 10
    _, secret = ApiKey.issue(owner=alice)
    for _ in range(30):
        r = api_with("relay_0123456789abcdef_wrong").get("/api/threads/")
        assert r.status_code in (401, 429)
    r = api_with(secret).get("/api/threads/")
    assert r.status_code == 429
    assert 0 < int(r["Retry-After"]) <= settings.AUTH_FAILURE_WINDOW
    assert api_with(secret, address="192.0.2.1").get("/api/threads/").status_code == 200


def test_it_does_not_count_requests_without_credentials(settings):
    settings.AUTH_FAILURE_LIMIT = 2
    client = APIClient(REMOTE_ADDR=ADDRESS)
    for _ in range(5):
        assert client.get("/api/threads/").status_code == 401
    assert not list(stream.client().scan_iter("relay:auth-failures:*"))


def test_it_answers_429_on_the_event_stream_too(settings):
    settings.AUTH_FAILURE_LIMIT = 3
    url = "/api/runs/00000000-0000-0000-0000-000000000000/events/"
    client = Client(REMOTE_ADDR=ADDRESS, HTTP_AUTHORIZATION="Bearer relay_0123456789abcdef_wrong")
    assert [client.get(url).status_code for _ in range(4)] == [401, 401, 401, 429]
    assert "Too many failed" in client.get(url).json()["detail"]
