"""The production environment of deploy/relay.env.example passes `manage.py check --deploy` with
no warning, and the settings it turns on stay off in development."""

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV_FILE = ROOT / "deploy" / "relay.env.example"
HTTPS_SETTINGS = [
    "SECURE_SSL_REDIRECT",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
]


@pytest.fixture(scope="session")
def _clean_redis():
    """These tests use neither Redis nor the test database: no flush of the suite's Redis
    database (conftest's autouse fixture of this name), which may be busy with another run."""


def read_env_file(path):
    """KEY=value lines as systemd's EnvironmentFile= reads them (comments and blank lines
    skipped, surrounding quotes removed)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=value: {line!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def base_env(tmp_path):
    """Only what a service would have besides its environment file: nothing of this shell's or
    pytest's Django, database or Redis settings."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL") if k in os.environ}
    env["RELAY_VAR_DIR"] = str(tmp_path)  # the example's /var/lib/relay is not ours to create
    return env


def production_env(tmp_path):
    env = read_env_file(ENV_FILE)
    assert "SECRET_KEY" in env, "the example must name SECRET_KEY"
    env["SECRET_KEY"] = secrets.token_urlsafe(50)  # the example leaves it for the operator
    return {**env, **base_env(tmp_path)}


def manage(env, *args):
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_reports_no_issue_in_the_production_environment(tmp_path):
    result = manage(production_env(tmp_path), "check", "--deploy", "--fail-level", "DEBUG")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout, result.stdout


def test_the_production_environment_refuses_to_start_without_a_secret_key(tmp_path):
    env = {**production_env(tmp_path), "SECRET_KEY": read_env_file(ENV_FILE)["SECRET_KEY"]}
    result = manage(env, "check")
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off." in result.stderr


def test_https_settings_are_off_in_development(tmp_path):
    env = {**base_env(tmp_path), "DJANGO_SETTINGS_MODULE": "config.settings"}
    names = json.dumps(["DEBUG", *HTTPS_SETTINGS])
    code = (
        "import json, django; django.setup(); from django.conf import settings; "
        f"print(json.dumps({{n: getattr(settings, n) for n in {names}}}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout.splitlines()[-1])
    assert values == {"DEBUG": True, "SECURE_HSTS_SECONDS": 0} | {
        name: False for name in HTTPS_SETTINGS if name != "SECURE_HSTS_SECONDS"
    }
