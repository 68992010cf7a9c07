"""The webhooks API: owner only, the secret shown once and rotated, events and URLs checked,
the per-user cap, and a run's one-off `webhook` checked as endpoints' URLs are."""

import pytest

from agents.models import create_thread
from webhooks.models import Delivery, Endpoint, RunWebhook

pytestmark = pytest.mark.django_db

URL = "https://hooks.example.com/relay"  # never called: nothing here delivers


@pytest.fixture(autouse=True)
def public_example(monkeypatch):
    """hooks.example.com resolves to a public address, without DNS."""
    import socket

    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host.endswith("example.com"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 443))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def create(api, url=URL, events=("run.completed", "run.failed"), **fields):
    return api.post("/api/webhooks/", {"url": url, "events": list(events), **fields})


def test_it_shows_the_secret_once_at_creation(alice_api):
    r = create(alice_api)
    assert r.status_code == 201, r.data
    secret = r.data["secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    assert r.data["events"] == ["run.completed", "run.failed"] and r.data["enabled"] is True
    endpoint = Endpoint.objects.get(pk=r.data["id"])
    assert secret not in endpoint.secret_sealed and endpoint.secret == secret  # sealed at rest
    for answer in (
        alice_api.get(f"/api/webhooks/{r.data['id']}/"),
        alice_api.get("/api/webhooks/"),
        alice_api.patch(f"/api/webhooks/{r.data['id']}/", {"enabled": False}),
    ):
        assert answer.status_code == 200, answer.data
        assert secret not in answer.content.decode() and "secret" not in answer.content.decode()


def test_it_rotates_the_secret(alice_api):
    r = create(alice_api)
    rotated = alice_api.post(f"/api/webhooks/{r.data['id']}/rotate/")
    assert rotated.status_code == 200
    assert (
        rotated.data["secret"].startswith("whsec_") and rotated.data["secret"] != r.data["secret"]
    )
    assert Endpoint.objects.get(pk=r.data["id"]).secret == rotated.data["secret"]


def test_another_users_endpoint_is_404(alice_api, bob_api):
    pk = create(alice_api).data["id"]
    for method, path in [
        ("get", f"/api/webhooks/{pk}/"),
        ("patch", f"/api/webhooks/{pk}/"),
        ("delete", f"/api/webhooks/{pk}/"),
        ("post", f"/api/webhooks/{pk}/rotate/"),
        ("get", f"/api/webhooks/{pk}/deliveries/"),
    ]:
        assert getattr(bob_api, method)(path, {}).status_code == 404, (method, path)
    assert bob_api.get("/api/webhooks/").data["results"] == []
    assert Endpoint.objects.filter(pk=pk).exists()


def test_it_refuses_unknown_and_missing_events(alice_api):
    r = create(alice_api, events=["run.completed", "run.exploded"])
    assert r.status_code == 400
    assert "run.exploded" in str(r.data["events"])
    r = create(alice_api, events=[])
    assert r.status_code == 400 and "events" in r.data
    assert not Endpoint.objects.exists()


def test_it_refuses_private_urls_naming_the_setting(alice_api, settings):
    for url in ["http://127.0.0.1:8000/hook", "http://10.0.0.5/hook", "http://[::1]/hook",
                "http://169.254.169.254/latest"]:  # fmt: skip
        r = create(alice_api, url=url)
        assert r.status_code == 400, url
        assert "WEBHOOKS_ALLOW_PRIVATE" in str(r.data["url"]), r.data
    assert create(alice_api, url="ftp://hooks.example.com/").status_code == 400
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    assert create(alice_api, url="http://127.0.0.1:8000/hook").status_code == 201


def test_it_caps_endpoints_per_user(alice_api, bob_api, settings):
    settings.WEBHOOKS_MAX_PER_USER = 2
    assert create(alice_api).status_code == 201
    assert create(alice_api).status_code == 201
    r = create(alice_api)
    assert r.status_code == 429 and r.data["code"] == "too_many_webhooks"
    assert "WEBHOOKS_MAX_PER_USER" in r.data["detail"]
    assert create(bob_api).status_code == 201


def test_deliveries_are_newest_first_with_their_attempts(alice_api, alice):
    pk = create(alice_api).data["id"]
    endpoint = Endpoint.objects.get(pk=pk)
    old, new = (
        Delivery.objects.create(owner=alice, endpoint=endpoint, url=URL, event=e, body="{}")
        for e in ("run.failed", "run.completed")
    )
    old.attempt_set.create(number=1, started=old.created, duration_ms=5, status_code=500,
                           outcome="http_error", error="the receiver answered 500")  # fmt: skip
    r = alice_api.get(f"/api/webhooks/{pk}/deliveries/")
    assert r.status_code == 200
    assert [d["webhook_id"] for d in r.data["results"]] == [new.webhook_id, old.webhook_id]
    assert r.data["results"][1]["attempts"][0]["outcome"] == "http_error"
    assert r.data["results"][1]["attempts"][0]["status_code"] == 500


def test_the_one_off_signing_secret_is_the_users_and_rotates(alice_api, bob_api):
    first = alice_api.get("/api/webhooks/signing-secret/").data["secret"]
    assert first.startswith("whsec_")
    assert alice_api.get("/api/webhooks/signing-secret/").data["secret"] == first
    assert bob_api.get("/api/webhooks/signing-secret/").data["secret"] != first
    rotated = alice_api.post("/api/webhooks/signing-secret/rotate/").data["secret"]
    assert rotated != first
    assert alice_api.get("/api/webhooks/signing-secret/").data["secret"] == rotated


def test_a_runs_one_off_webhook_is_checked_and_kept(alice_api, alice, no_queue):
    thread = create_thread(owner=alice, agent=alice.agents.get())
    path = f"/api/threads/{thread.pk}/runs/"
    r = alice_api.post(path, {"message": "hi", "webhook": "http://127.0.0.1:9/hook"})
    assert r.status_code == 400 and r.data["field"] == "webhook", r.data
    assert "WEBHOOKS_ALLOW_PRIVATE" in r.data["detail"]
    r = alice_api.post(path, {"message": "hi", "webhook": "not a url"})
    assert r.status_code == 400 and "webhook" in r.data
    assert not thread.runs.exists()
    r = alice_api.post(path, {"message": "hi", "webhook": URL})
    assert r.status_code == 202, r.data
    assert RunWebhook.objects.get(run_id=r.data["id"]).url == URL


def test_a_queued_message_cannot_name_a_one_off_webhook(alice_api, alice, no_queue):
    thread = create_thread(owner=alice, agent=alice.agents.get())
    body = {"message": "hi", "webhook": URL, "if_busy": "enqueue"}
    r = alice_api.post(f"/api/threads/{thread.pk}/runs/", body)
    assert r.status_code == 400 and "webhook" in r.data


def test_a_workflow_run_takes_a_one_off_webhook(alice_api, alice, no_queue):
    definition = {"steps": [{"id": "t", "type": "tool", "tool": "current_time", "arguments": {}}]}
    workflow = alice_api.post("/api/workflows/", {"name": "w", "definition": definition})
    assert workflow.status_code == 201, workflow.data
    path = f"/api/workflows/{workflow.data['id']}/runs/"
    r = alice_api.post(path, {"webhook": "http://10.1.2.3/hook"})
    assert r.status_code == 400 and r.data["field"] == "webhook"
    r = alice_api.post(path, {"webhook": URL})
    assert r.status_code == 202, r.data
    assert RunWebhook.objects.get(run_id=r.data["id"]).url == URL


def test_a_port_out_of_range_is_a_400_not_a_500(alice_api, alice, no_queue):
    r = create(alice_api, url="http://hooks.example.com:99999/hook")
    assert r.status_code == 400 and "url" in r.data
    thread = create_thread(owner=alice, agent=alice.agents.get())
    body = {"message": "hi", "webhook": "http://hooks.example.com:99999/hook"}
    r = alice_api.post(f"/api/threads/{thread.pk}/runs/", body)
    assert r.status_code == 400, r.data
