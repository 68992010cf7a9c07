"""Upgrading keeps data. The code of an older commit (UPGRADE_FROM) migrates a database of its
own and fills it through its models (tests/upgrade/fill.py: users, agents, chats with runs and
tool calls, a workflow with a failed run, its steps and its retry, schedules with their
PeriodicTasks and fires); then the current code migrates the same database. Every row the old
code left is still there with the same values, save what is dropped on purpose and documented
(DROPPED_TABLES); the API answers what the old code saved; and every question asked of the
old code, API and pages, gets the same answer from the current one."""

import html
import io
import json
import os
import re
import secrets
import sqlite3
import subprocess
import sys
import tarfile
from contextlib import closing
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

# The commit whose databases must upgrade: the last release before ApiKey replaced DRF's
# authtoken. CI has it: it clones main with its history.
UPGRADE_FROM = "fc5b06b"

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "upgrade"

# Tables the upgrade drops on purpose, and where users are told.
DROPPED_TABLES = {
    "authtoken_token": "README, The API: plain-text keys are dropped by agents.0006",
}
# Bookkeeping that migrations rewrite by design (0006 deletes authtoken's rows), not data.
NOT_COMPARED = {"django_migrations"}
# Models that move to another app, (old app, model): new app. Their content types (which
# permissions and the admin's log point at) move with them: the same rows, relabelled.
MOVED_MODELS = {
    ("agents", "thread"): "runs",
    ("agents", "message"): "runs",
    ("agents", "run"): "runs",
}
# A model that moves to another app keeps its table (Meta.db_table) or its migration renames
# it: name the rename here, old table: new table.
RENAMED_TABLES = {
    "agents_thread": "runs_thread",
    "agents_message": "runs_message",
    "agents_run": "runs_run",
}
# A column that moves to another table, (old table, column): (new table, the new table's column
# holding the old row's primary key, new column); e.g. a run's workflow moving to a
# workflows-owned row linked to the run.
MOVED_COLUMNS = {
    ("agents_thread", "agent_id"): ("agents_threadagent", "thread_id", "agent_id"),
    ("agents_run", "agent_id"): ("agents_runagent", "run_id", "agent_id"),
    ("agents_run", "workflow_id"): ("workflows_workflowrun", "run_id", "workflow_id"),
    ("agents_run", "definition"): ("workflows_workflowrun", "run_id", "definition"),
    ("agents_run", "inputs"): ("workflows_workflowrun", "run_id", "inputs"),
}
# Answers that depend on the clock, not on the data.
VOLATILE = {"next_fires"}
NOT_FOUND = "404"  # what another user's object must answer


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """A database of the test's own, beside the test database: its URL and a DB-API connect()."""
    default = settings.DATABASES["default"]
    if default["ENGINE"] != "django.db.backends.postgresql":
        path = tmp_path_factory.mktemp("database") / "upgrade.sqlite3"
        yield f"sqlite:///{path}", lambda: sqlite3.connect(path)
        return
    import psycopg

    server = {
        "host": default["HOST"] or "127.0.0.1",
        "port": default["PORT"] or 5432,
        "user": default["USER"],
        "password": default["PASSWORD"] or None,
    }
    name = f"relay_upgrade_{secrets.token_hex(4)}"
    with psycopg.connect(dbname="postgres", autocommit=True, **server) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    credentials = quote(server["user"] or "") + (
        f":{quote(server['password'])}" if server["password"] else ""
    )
    try:
        yield (
            f"postgresql://{credentials}@{server['host']}:{server['port']}/{name}",
            lambda: psycopg.connect(dbname=name, **server),
        )
    finally:
        with psycopg.connect(dbname="postgres", autocommit=True, **server) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def old_code(tree):
    """UPGRADE_FROM's files in `tree` (git archive: nothing in the repository changes)."""
    archive = subprocess.run(
        ["git", "-C", ROOT, "archive", "--format=tar", UPGRADE_FROM],
        capture_output=True,
        timeout=60,
    )
    if archive.returncode:
        pytest.fail(
            f"git archive {UPGRADE_FROM}: {archive.stderr.decode()}"
            "this test needs the history back to that commit (a full clone, not a shallow one)"
        )
    tree.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def in_code(tree, env, *args):
    """Run the venv's python in `tree`'s code (first on sys.path, whatever is installed)."""
    result = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=tree,
        env={**env, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{args} in {tree}:\n{result.stdout}{result.stderr}"


def table_rows(connect):
    """{table: {"columns": [...], "rows": {primary key: {column: value}}}} of every table."""
    with closing(connect()) as db:
        cursor = db.cursor()
        if isinstance(db, sqlite3.Connection):
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = [t for (t,) in cursor.fetchall() if not t.startswith("sqlite_")]
            keys = {}
            for table in tables:
                cursor.execute(f'PRAGMA table_info("{table}")')
                keys[table] = [c[1] for c in sorted(cursor.fetchall(), key=lambda c: c[5]) if c[5]]
        else:
            cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            tables = [t for (t,) in cursor.fetchall()]
            cursor.execute(
                "SELECT c.relname, a.attname FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indrelid"
                " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
                " WHERE i.indisprimary ORDER BY array_position(i.indkey, a.attnum)"
            )
            keys = {}
            for table, column in cursor.fetchall():
                keys.setdefault(table, []).append(column)
        found = {}
        for table in tables:
            cursor.execute(f'SELECT * FROM "{table}"')
            columns = [d[0] for d in cursor.description]
            rows = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
            key = keys.get(table)
            found[table] = {
                "columns": columns,
                # a table without a primary key is compared row by row, by its whole row
                "rows": {
                    tuple(r[c] for c in key) if key else repr(sorted(r.items())): r for r in rows
                },
            }
        return found


def lost_rows(before, after):
    """What the old rows lost in the upgrade, a line each; empty when nothing was."""
    lost = []
    for table, old in before.items():
        if table in NOT_COMPARED:
            continue
        if table in DROPPED_TABLES:
            if table in after:
                lost.append(f"{table}: kept, though {DROPPED_TABLES[table]}")
            continue
        new_table = RENAMED_TABLES.get(table, table)
        if new_table not in after:
            lost.append(f"{table}: gone, with its {len(old['rows'])} rows")
            continue
        new = after[new_table]
        gone = [
            c for c in old["columns"] if c not in new["columns"] and (table, c) not in MOVED_COLUMNS
        ]
        lost += [f"{table}.{column}: gone" for column in gone]
        for key, row in old["rows"].items():
            if key not in new["rows"]:
                lost.append(f"{table} {key}: gone ({row})")
                continue
            for column, value in row.items():
                if column in gone:
                    continue
                if (table, column) in MOVED_COLUMNS:
                    moved_to, link, moved_column = MOVED_COLUMNS[table, column]
                    (pk,) = key
                    there = [r for r in after[moved_to]["rows"].values() if r[link] == pk]
                    # no row there stands for null (an extension row only where it applies)
                    now = there[0][moved_column] if there else None
                    where = f"{moved_to}.{moved_column}"
                else:
                    now, where = new["rows"][key][column], column
                if table == "django_content_type" and column == "app_label":
                    value = MOVED_MODELS.get((value, row["model"]), value)
                if now != value:
                    lost.append(f"{table} {key} {column}: {value!r}, now {where} = {now!r}")
    return lost


def questions(made):
    """What to ask of the old code and of the current one, API and pages, from what fill.py
    made: (request, what the answer must show) pairs; for a page, texts it must contain."""
    user = {u["id"]: u["username"] for u in made["users"]}
    asked = [
        ({"path": "/api/agents/", "user": "alice"}, None),
        ({"path": "/api/runs/?page_size=200", "user": "alice"}, None),
        ({"path": "/api/workflows/", "user": "alice"}, None),
        ({"path": "/api/schedules/", "user": "alice"}, None),
        ({"path": "/workflows/", "user": "alice"}, [w["name"] for w in made["workflows"]]),
        ({"path": "/schedules/", "user": "alice"}, [s["name"] for s in made["schedules"]]),
    ]
    for name in ("alice", "bob"):
        threads = [t for t in made["threads"] if user[t["owner"]] == name]
        listed = {"results": [t | {"active_run": active(made, t)} for t in threads]}
        asked += [
            ({"path": "/api/threads/?page_size=200", "user": name}, listed),
            ({"path": "/chats/", "user": name}, [t["title"] for t in threads if t["title"]]),
        ]
    for thread in made["threads"]:
        owner, pk = user[thread["owner"]], thread["id"]
        messages = [m for m in made["messages"] if m["thread"] == pk]
        runs = [r for r in made["runs"] if r["thread"] == pk]
        asked += [
            ({"path": f"/api/threads/{pk}/", "user": owner}, thread),
            ({"path": f"/api/threads/{pk}/messages/?page_size=200", "user": owner},
             {"results": messages}),
            ({"path": f"/api/threads/{pk}/runs/?page_size=200", "user": owner},
             {"results": sorted(runs, key=lambda r: r["created"], reverse=True)}),
            ({"path": f"/chats/{pk}/", "user": owner},
             [m["content"] for m in messages if m["role"] == "user"]),
        ]  # fmt: skip
    for run in made["runs"]:
        owner = user[run["owner"]]
        asked.append(({"path": f"/api/runs/{run['id']}/", "user": owner}, run))
        if run["workflow"]:
            steps = [s for s in made["steps"] if s["run"] == run["id"]]
            asked += [
                ({"path": f"/api/runs/{run['id']}/steps/", "user": owner}, {"results": steps}),
                ({"path": f"/workflows/runs/{run['id']}/", "user": owner},
                 [s["step"] for s in steps] + [run["error"]]),
            ]  # fmt: skip
    for workflow in made["workflows"]:
        pk, owner = workflow["id"], user[workflow["owner"]]
        asked += [
            ({"path": f"/api/workflows/{pk}/", "user": owner}, workflow),
            ({"path": f"/workflows/{pk}/", "user": owner}, [workflow["name"]]),
        ]
    for schedule in made["schedules"]:
        pk, owner = schedule["id"], user[schedule["owner"]]
        fires = [f for f in made["fires"] if f["schedule"] == pk]
        asked += [
            ({"path": f"/api/schedules/{pk}/", "user": owner}, schedule),
            ({"path": f"/api/schedules/{pk}/fires/?page_size=200", "user": owner},
             {"results": sorted(fires, key=lambda f: f["slot"], reverse=True)}),
        ]  # fmt: skip
    alices = next(t for t in made["threads"] if user[t["owner"]] == "alice")
    asked.append(({"path": f"/api/threads/{alices['id']}/", "user": "bob"}, NOT_FOUND))
    return asked


def active(made, thread):
    return next(
        (r["id"] for r in made["runs"]
         if r["thread"] == thread["id"] and r["status"] in ("queued", "running")),
        None,
    )  # fmt: skip


@pytest.fixture(scope="module")
def upgrade(database, tmp_path_factory):
    """Old code: migrate, fill, answer; then current code: migrate, answer. What each saw."""
    url, connect = database
    tmp = tmp_path_factory.mktemp("upgrade")
    old = old_code(tmp / "old")
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "RELAY_VAR_DIR": str(tmp),  # neither tree's var/
        "LOG_LEVEL": "WARNING",
    }  # REDIS_URL: the session's (conftest), though neither migrate nor a GET needs one

    in_code(old, env, "manage.py", "migrate", "--noinput")
    in_code(old, env, SCRIPTS / "fill.py", tmp / "made.json")
    made = json.loads((tmp / "made.json").read_text())
    asked = questions(made)
    requests = [request for request, _ in asked]
    # the old token, which the old code takes
    requests.append({"path": "/api/threads/", "token": made["token"]})
    (tmp / "asked.json").write_text(json.dumps(requests))
    in_code(old, env, SCRIPTS / "answers.py", tmp / "asked.json", tmp / "before.json")
    rows_before = table_rows(connect)  # after the old answers: their logins wrote rows too

    in_code(ROOT, env, "manage.py", "migrate", "--noinput")
    rows_after = table_rows(connect)
    in_code(ROOT, env, SCRIPTS / "answers.py", tmp / "asked.json", tmp / "after.json")
    return {
        "made": made,
        "asked": asked,
        "requests": requests,
        "before": json.loads((tmp / "before.json").read_text()),
        "after": json.loads((tmp / "after.json").read_text()),
        "rows_before": rows_before,
        "rows_after": rows_after,
    }


def test_it_keeps_every_row_with_its_values(upgrade):
    before, after = upgrade["rows_before"], upgrade["rows_after"]
    lost = lost_rows(before, after)
    assert not lost, f"{len(lost)} losses in the upgrade from {UPGRADE_FROM}:\n" + "\n".join(
        lost[:40]
    )
    made = upgrade["made"]
    compared = sum(len(t["rows"]) for name, t in before.items() if name not in NOT_COMPARED)
    assert compared > sum(len(made[k]) for k in ("messages", "runs", "steps", "fires"))


def test_it_drops_the_plain_text_tokens_as_documented(upgrade):
    assert upgrade["rows_before"]["authtoken_token"]["rows"], "fill.py made a token"
    assert "authtoken_token" not in upgrade["rows_after"]
    # the old code took it; the current one refuses it, as the README says
    assert upgrade["before"][-1]["status"] == 200
    assert upgrade["after"][-1]["status"] == 401, upgrade["after"][-1]


def test_the_api_and_pages_answer_with_what_the_old_code_saved(upgrade):
    wrong = []
    for (request, expected), got in zip(upgrade["asked"], upgrade["after"][:-1], strict=True):
        where = f"{request['user']} GET {request['path']}"
        if isinstance(expected, list) and "text" in got:  # a page: what it must show
            if got["status"] != 200:
                wrong.append(f"{where}: {got['status']}")
            wrong += [
                f"{where}: no {text!r}" for text in expected if html.escape(text) not in got["text"]
            ]
        elif expected == NOT_FOUND:
            if got["status"] != 404:
                wrong.append(f"{where}: {got['status']}, not 404")
        elif got["status"] != 200:
            wrong.append(f"{where}: {got['status']}")
        elif expected is not None:
            wrong += differences(expected, got["json"], where, saved=True)
    assert not wrong, "\n".join(wrong[:40])


def test_every_answer_is_as_before(upgrade):
    changed = []
    for (request, expected), old, new in zip(
        upgrade["asked"], upgrade["before"][:-1], upgrade["after"][:-1], strict=True
    ):
        where = f"{request['user']} GET {request['path']}"
        status = 404 if expected == NOT_FOUND else 200
        assert old["status"] == status, f"{where}: the old code answered {old['status']}"
        if new["status"] != old["status"]:
            changed.append(f"{where}: {old['status']} before, {new['status']} now")
        elif "json" in old:
            changed += differences(old["json"], new.get("json"), where)
    assert not changed, "\n".join(changed[:40])


ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT")


def differences(expected, got, where, saved=False):
    """Where `got` does not hold `expected`: a dict's keys (with `saved`, those the answer
    has: fill.py saved more than the API shows), a list item by item, times as instants."""
    if isinstance(expected, dict) and isinstance(got, dict):
        keys = [k for k in expected if k not in VOLATILE and (not saved or k in got)]
        missing = [f"{where}: no {k!r}" for k in keys if k not in got]
        return missing + [
            line
            for k in keys
            if k in got
            for line in differences(expected[k], got[k], f"{where} {k}", saved)
        ]
    if isinstance(expected, list) and isinstance(got, list):
        if len(expected) != len(got):
            return [f"{where}: {len(expected)} items expected, {len(got)} now"]
        return [
            line
            for i, (e, g) in enumerate(zip(expected, got, strict=True))
            for line in differences(e, g, f"{where} [{i}]", saved)
        ]
    if isinstance(expected, str) and isinstance(got, str) and ISO_TIME.match(expected):
        expected, got = datetime.fromisoformat(expected), datetime.fromisoformat(got)
    return [] if expected == got else [f"{where}: {expected!r} expected, {got!r} now"]
