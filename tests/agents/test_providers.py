"""Providers in the API: owner only, the API key and headers write-only and encrypted at rest,
rotation of the encryption key, and agents naming a provider."""

import io

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command

from agents import secrets
from agents.models import Provider

pytestmark = pytest.mark.django_db

KEY = "sk-live-0123456789abcdef"
BODY = {"name": "Local", "kind": "openai", "base_url": "https://8.8.8.8/v1", "api_key": KEY}


@pytest.fixture
def provider(alice_api):
    r = alice_api.post("/api/providers/", {**BODY, "headers": {"X-Team": "t-1"}}, format="json")
    assert r.status_code == 201, r.data
    return r.data


def test_the_key_and_headers_are_never_shown_and_are_encrypted_at_rest(alice_api, provider):
    for r in (alice_api.get(f"/api/providers/{provider['id']}/"), alice_api.get("/api/providers/")):
        assert KEY not in r.content.decode() and "t-1" not in r.content.decode()
    assert provider["has_api_key"] is True
    assert provider["header_names"] == ["X-Team"]
    assert "api_key" not in provider and "headers" not in provider
    row = Provider.objects.get(pk=provider["id"])
    assert KEY not in row.api_key_sealed and "t-1" not in row.headers_sealed
    assert row.api_key == KEY and row.headers == {"X-Team": "t-1"}


def test_a_change_without_the_key_keeps_it_and_an_empty_one_clears_it(alice_api, provider):
    url = f"/api/providers/{provider['id']}/"
    r = alice_api.patch(url, {"default_model": "llama3"}, format="json")
    assert r.status_code == 200 and r.data["has_api_key"] is True
    assert Provider.objects.get(pk=provider["id"]).api_key == KEY
    r = alice_api.patch(url, {"api_key": ""}, format="json")
    assert r.data["has_api_key"] is False
    assert Provider.objects.get(pk=provider["id"]).api_key_sealed == ""


def test_another_users_provider_is_not_found_nor_usable(bob_api, provider):
    assert bob_api.get(f"/api/providers/{provider['id']}/").status_code == 404
    assert bob_api.delete(f"/api/providers/{provider['id']}/").status_code == 404
    r = bob_api.post("/api/agents/", {"name": "B", "provider": provider["id"]}, format="json")
    assert r.status_code == 400 and "provider" in r.data


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({**BODY, "kind": "cohere"}, "kind", "not a valid choice"),
        ({**BODY, "base_url": "ftp://example.com/"}, "base_url", "http:// or https:// URL"),
        ({**BODY, "base_url": "http://127.0.0.1:11434/v1"}, "base_url", "not a public address"),
        ({**BODY, "base_url": "http://[::ffff:10.0.0.1]/v1"}, "base_url", "not a public address"),
        ({**BODY, "headers": {"Host": "x"}}, "headers", "set by Relay itself"),
        ({**BODY, "headers": {"X-A": "1\r\nX-B: 2"}}, "headers", "line break"),
        ({**BODY, "headers": {"a b": "1"}}, "headers", "not a header name"),
        ({key: value for key, value in BODY.items() if key != "base_url"}, "base_url", "required"),
    ],
)
def test_bad_providers_are_refused_with_the_field_and_reason(alice_api, body, field, reason):
    r = alice_api.post("/api/providers/", body, format="json")
    assert r.status_code == 400
    assert reason in str(r.data[field]), r.data
    assert not Provider.objects.exists()


def test_private_addresses_are_allowed_when_the_setting_says_so(alice_api, settings):
    settings.PROVIDERS_ALLOW_PRIVATE = True
    body = {**BODY, "base_url": "http://127.0.0.1:11434/v1"}
    assert alice_api.post("/api/providers/", body, format="json").status_code == 201


def test_a_user_has_at_most_the_allowed_number_of_providers(alice_api, settings):
    settings.PROVIDERS_MAX_PER_USER = 1
    assert alice_api.post("/api/providers/", BODY, format="json").status_code == 201
    r = alice_api.post("/api/providers/", {**BODY, "name": "Two"}, format="json")
    assert r.status_code == 429 and r.data["code"] == "too_many"


def test_an_agent_names_a_provider_and_a_provider_in_use_is_not_deleted(alice_api, provider):
    r = alice_api.post(
        "/api/agents/",
        {"name": "Remote", "provider": provider["id"], "model": "gpt-x", "temperature": 0.2,
         "max_tokens": 256},
        format="json",
    )  # fmt: skip
    assert r.status_code == 201, r.data
    assert (r.data["provider"], r.data["temperature"], r.data["max_tokens"]) == (
        provider["id"], 0.2, 256,
    )  # fmt: skip
    r = alice_api.delete(f"/api/providers/{provider['id']}/")
    assert r.status_code == 409 and "Remote" in r.data["detail"]
    assert Provider.objects.filter(pk=provider["id"]).exists()


def test_an_agent_without_a_model_needs_a_provider_default(alice_api, provider):
    r = alice_api.post("/api/agents/", {"name": "A", "provider": provider["id"], "model": ""},
                       format="json")  # fmt: skip
    assert r.status_code == 400 and "Name a model" in str(r.data["model"])
    alice_api.patch(f"/api/providers/{provider['id']}/", {"default_model": "m"}, format="json")
    r = alice_api.post("/api/agents/", {"name": "A", "provider": provider["id"], "model": ""},
                       format="json")  # fmt: skip
    assert r.status_code == 201, r.data


def test_rotating_the_encryption_key_keeps_every_secret(alice_api, provider, settings):
    old = secrets.derived_key(settings.SECRET_KEY)
    new = Fernet.generate_key()
    settings.SECRETS_ENCRYPTION_KEYS = [new, old]
    out = io.StringIO()
    call_command("rotate_secrets", stdout=out)
    assert "providers: 1 encrypted again" in out.getvalue()
    settings.SECRETS_ENCRYPTION_KEYS = [new]  # the old key gone: everything still reads
    row = Provider.objects.get(pk=provider["id"])
    assert row.api_key == KEY and row.headers == {"X-Team": "t-1"}


def test_a_secret_no_key_decrypts_says_what_to_do(provider, settings):
    settings.SECRETS_ENCRYPTION_KEYS = [Fernet.generate_key()]
    with pytest.raises(secrets.SecretUnreadable, match="rotate_secrets"):
        _ = Provider.objects.get(pk=provider["id"]).api_key
