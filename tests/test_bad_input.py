"""Bad input answers 400 naming the field and the reason (the run form: the form again, with
it), and saves nothing: ids that are not ids, text that is not text, JSON that PostgreSQL's jsonb
cannot hold, nesting without bound, and the same through the pages' forms. Most of these
answered 500 before, some only on PostgreSQL."""

import json

import pytest

from agents.models import Agent, create_thread
from runs.models import Run
from scheduling.models import Schedule
from workflows.models import Workflow

from conftest import saved

pytestmark = pytest.mark.django_db

WORKFLOW = {
    "inputs": [
        {"name": "a", "type": "number", "required": True},
        {"name": "topic", "type": "string", "default": "numbers"},
    ],
    "steps": [{"id": "explain", "type": "agent", "prompt": "Explain {{ inputs.a }}"}],
}
# a workflow with every kind of input the run form turns from text into a value
FORM_WORKFLOW = {
    "inputs": [
        {"name": "a", "type": "number", "required": True},
        {"name": "j", "type": "json"},
        {"name": "s", "type": "string"},
    ],
    "steps": [{"id": "say", "type": "agent", "prompt": "Say {{ inputs.a }} {{ inputs.s }}"}],
}


@pytest.fixture
def world(alice):
    """Alice's objects the requests refer to, by the names the cases use in their urls and
    bodies ("<thread>" and so on)."""
    agent = alice.agents.get()
    thread = create_thread(owner=alice, agent=agent)
    workflow = Workflow.objects.create(owner=alice, name="Sum", definition=WORKFLOW)
    schedule = Schedule.objects.create(
        owner=alice, name="Daily", target="agent", agent=agent, prompt="Hi", cron="0 * * * *"
    )
    return {"agent": agent, "thread": thread, "workflow": workflow, "schedule": schedule}


def fill(text, world):
    for name, obj in world.items():
        text = text.replace(f'"<{name}>"', str(obj.pk)).replace(f"<{name}>", str(obj.pk))
    return text


def send(api, world, method, url, fields, raw):
    """`fields` as JSON with the placeholder "@" replaced by the raw JSON text `raw`."""
    text = fill(json.dumps(fields).replace('"@"', raw), world)
    return api.generic(method, fill(url, world), text, content_type="application/json")


AGENT_SCHEDULE = {"name": "S", "target": "agent", "agent": "<agent>", "prompt": "Hi",
                  "cron": "0 * * * *"}  # fmt: skip
WORKFLOW_SCHEDULE = {"name": "S", "target": "workflow", "workflow": "<workflow>",
                     "inputs": {"a": 1}, "cron": "0 * * * *"}  # fmt: skip

ID_FIELDS = [
    ("POST", "/api/threads/", {"agent": "@"}, "agent"),
    ("PATCH", "/api/threads/<thread>/", {"agent": "@"}, "agent"),
    ("POST", "/api/threads/<thread>/runs/", {"message": "Hi", "agent": "@"}, "agent"),
    ("POST", "/api/workflows/<workflow>/runs/", {"inputs": {"a": 1}, "thread": "@"}, "thread"),
    ("POST", "/api/schedules/", {**AGENT_SCHEDULE, "agent": "@"}, "agent"),
    ("POST", "/api/schedules/", {**WORKFLOW_SCHEDULE, "workflow": "@"}, "workflow"),
    ("POST", "/api/schedules/", {**AGENT_SCHEDULE, "thread": "@"}, "thread"),
    ("PATCH", "/api/schedules/<schedule>/", {"agent": "@"}, "agent"),
]
BAD_IDS = [
    ("1e999", "finite"),
    ("-1e999", "finite"),
    ("9999999999999999999999999", "Invalid pk"),
    ("-9999999999999999999999999", "Invalid pk"),
    ("9223372036854775808", "Invalid pk"),  # one above PostgreSQL's bigint
    ("0", "Invalid pk"),
    ("1.5", "Incorrect type"),  # was taken as id 1
    ("true", "Incorrect type"),
    ('"abc"', "Incorrect type"),
    ('"1e999"', "Incorrect type"),
    ('"9999999999999999999999999"', "Invalid pk"),
]


@pytest.mark.parametrize(("raw", "reason"), BAD_IDS)
@pytest.mark.parametrize(("method", "url", "fields", "field"), ID_FIELDS)
def test_it_refuses_an_id_that_is_no_id(alice_api, world, method, url, fields, field, raw, reason):
    before = saved()
    r = send(alice_api, world, method, url, fields, raw)
    assert r.status_code == 400, r.content
    assert reason in str(r.json()[field])
    assert saved() == before


TEXT_FIELDS = [
    ("POST", "/api/threads/<thread>/runs/", {"message": "Hi", "if_busy": "@"}, "if_busy"),
    ("POST", "/api/threads/<thread>/runs/", {"message": "@"}, "message"),
    ("POST", "/api/schedules/", {**AGENT_SCHEDULE, "target": "@"}, "target"),
    ("POST", "/api/schedules/", {**AGENT_SCHEDULE, "overlap": "@"}, "overlap"),
    ("POST", "/api/schedules/", {**AGENT_SCHEDULE, "timezone": "@"}, "timezone"),
    ("POST", "/api/agents/", {"name": "X", "config": {"note": "@"}}, "config"),
    ("POST", "/api/agents/", {"name": "X", "config": {"demo": {"words": "@"}}}, "config"),
    ("POST", "/api/agents/", {"name": "@"}, "name"),
    ("PATCH", "/api/threads/<thread>/", {"title": "@"}, "title"),
    ("POST", "/api/threads/<thread>/runs/", {"message": "Hi", "webhook": "@"}, "webhook"),
    ("POST", "/api/workflows/<workflow>/runs/", {"inputs": {"a": 1}, "webhook": "@"}, "webhook"),
    ("POST", "/api/webhooks/", {"url": "@", "events": ["run.failed"]}, "url"),
    ("POST", "/api/webhooks/", {"url": "https://h.example/", "events": ["@"]}, "events"),
    (
        "POST",
        "/api/webhooks/",
        {"url": "https://h.example/", "events": ["run.failed"], "description": "@"},
        "description",
    ),
]
# a lone surrogate is not a character: it cannot be encoded, so an error message that echoed it
# could not be sent; nor can PostgreSQL store a null character
BAD_TEXT = [
    (r'"\ud800"', "surrogate"),
    (r'"a\udfffb"', "surrogate"),
    (r'"\u0000"', "Null characters"),
]


@pytest.mark.parametrize(("raw", "reason"), BAD_TEXT)
@pytest.mark.parametrize(("method", "url", "fields", "field"), TEXT_FIELDS)
def test_it_refuses_text_that_is_no_text(alice_api, world, method, url, fields, field, raw, reason):
    before = saved()
    r = send(alice_api, world, method, url, fields, raw)
    assert r.status_code == 400, r.content
    assert reason in str(r.json()[field])
    assert saved() == before


def definition_with_prompt():
    return {**WORKFLOW, "steps": [{**WORKFLOW["steps"][0], "prompt": "@"}]}


JSONB_FIELDS = [
    ("POST", "/api/workflows/<workflow>/runs/", {"inputs": {"a": 1, "topic": "@"}}, "inputs"),
    ("POST", "/api/workflows/<workflow>/runs/", {"inputs": {"a": "@"}}, "inputs"),
    ("POST", "/api/workflows/", {"name": "W", "definition": definition_with_prompt()},
     "definition"),
    ("PATCH", "/api/workflows/<workflow>/", {"definition": definition_with_prompt()},
     "definition"),
    ("POST", "/api/schedules/", {**WORKFLOW_SCHEDULE, "inputs": {"a": "@"}}, "inputs"),
    ("POST", "/api/schedules/", {**WORKFLOW_SCHEDULE, "inputs": {"a": 1, "topic": "@"}},
     "inputs"),
    ("POST", "/api/agents/", {"name": "X", "config": {"x": "@"}}, "config"),
]  # fmt: skip
BAD_JSONB = [
    (r'"\u0000"', "Null characters"),
    (r'"x\u0000"', "Null characters"),
    (r'"\udfff"', "surrogate"),
    ("1e999", "finite"),
    ("-1e999", "finite"),
    ("NaN", "finite"),
    ("-Infinity", "finite"),
    ('{"a": [' * 20 + "1" + "]}" * 20, "Nested deeper"),
]


@pytest.mark.parametrize(("raw", "reason"), BAD_JSONB)
@pytest.mark.parametrize(("method", "url", "fields", "field"), JSONB_FIELDS)
def test_it_refuses_json_that_jsonb_cannot_store(
    alice_api, world, method, url, fields, field, raw, reason
):
    before = saved()
    r = send(alice_api, world, method, url, fields, raw)
    assert r.status_code == 400, r.content
    assert reason in str(r.json()[field])
    assert saved() == before


def test_it_names_where_in_the_field_the_bad_value_is(alice_api, world):
    fields = {"name": "W", "definition": definition_with_prompt()}
    r = send(alice_api, world, "POST", "/api/workflows/", fields, r'"\u0000"')
    expected = "definition.steps[0].prompt: Null characters are not allowed."
    assert r.json() == {"definition": [expected]}


@pytest.mark.parametrize(
    ("url", "text", "field"),
    [
        ("/api/threads/", "[" * 100_000, None),
        ("/api/agents/", '{"name": "X", "config": ' + "[" * 100_000, "config"),
        ("/api/agents/", '{"name": "X", "config": ' + '{"a": ' * 5000 + "1" + "}" * 5001, "config"),
        ("/api/agents/", '{"name": "X", "config": ' + '{"a": ' * 40 + "1" + "}" * 41, "config"),
        ("/api/schedules/preview/", '{"cron": "* * * * *", "x": ' + "[" * 900 + "]" * 900 + "}",
         "x"),
    ],
)  # fmt: skip
def test_it_refuses_nesting_beyond_the_bound(alice_api, world, url, text, field):
    before = saved()
    r = alice_api.generic("POST", url, text, content_type="application/json")
    assert r.status_code == 400, r.content
    assert "Nested deeper than 32 levels" in str(r.json()[field or "detail"])
    assert saved() == before


def test_it_takes_the_nesting_bound_from_the_settings(alice_api, world, settings):
    settings.JSON_MAX_DEPTH = 3
    config = {"a": {"b": {"c": 1}}}
    r = alice_api.post("/api/agents/", {"name": "X", "config": config}, format="json")
    assert r.status_code == 400
    assert "config.a.b: Nested deeper than 3 levels" in str(r.json()["config"])
    settings.JSON_MAX_DEPTH = 4
    r = alice_api.post("/api/agents/", {"name": "X", "config": config}, format="json")
    assert r.status_code == 201, r.content


def test_it_still_takes_ordinary_json(alice_api, world):
    r = send(
        alice_api, world, "POST", "/api/workflows/<workflow>/runs/", {"inputs": "@"},
        r'{"a": 2.5e-3, "topic": "caf\u00e9 \ud83d\ude00"}',
    )  # fmt: skip
    assert r.status_code == 202, r.content
    assert Run.objects.get().workflow_run.inputs == {"a": 0.0025, "topic": "café 😀"}


def test_it_refuses_a_form_body_on_the_api(alice_api, world):
    r = alice_api.post(
        f"/api/threads/{world['thread'].pk}/runs/", {"message": "Hi"}, format="multipart"
    )
    assert r.status_code == 415
    assert not Run.objects.exists()


# the pages


@pytest.mark.parametrize(
    ("inputs", "path"),
    [
        ({"a": "nan"}, "inputs.a"),
        ({"a": "inf"}, "inputs.a"),
        ({"a": "-Infinity"}, "inputs.a"),
        ({"a": "1e400"}, "inputs.a"),
        ({"a": "9" * 5000}, "inputs.a"),
        ({"a": "1", "j": "NaN"}, "inputs.j"),
        ({"a": "1", "j": "1e999"}, "inputs.j"),
        ({"a": "1", "j": "[" * 50_000}, "inputs.j"),
        ({"a": "1", "j": "[" * 40 + "]" * 40}, "inputs.j" + "[0]" * 32),
        ({"a": "1", "j": '{"a": "\\u0000"}'}, "inputs.j.a"),
        ({"a": "1", "j": '{"a": "\\ud800"}'}, "inputs.j.a"),
        ({"a": "1", "j": '{"\\ud800": 1}'}, "inputs.j"),
        ({"a": "1", "j": "{"}, "inputs.j"),
        ({"a": "1", "j": "9" * 5000}, "inputs.j"),
        ({"a": "1", "s": "x\x00y"}, "inputs.s"),
    ],
)
def test_the_run_form_refuses_what_cannot_be_stored(alice, alice_web, inputs, path):
    workflow = Workflow.objects.create(owner=alice, name="Form", definition=FORM_WORKFLOW)
    before = saved()
    r = alice_web.post(f"/workflows/{workflow.pk}/", inputs)
    assert r.status_code == 200  # the form again, with the reason (a Django form's way)
    assert f"{path}: " in r.content.decode()
    assert saved() == before


def test_the_run_form_still_takes_numbers_and_json(alice, alice_web, no_queue):
    workflow = Workflow.objects.create(owner=alice, name="Form", definition=FORM_WORKFLOW)
    r = alice_web.post(f"/workflows/{workflow.pk}/", {"a": "2.5", "j": '{"k": [1, "é"]}'})
    assert r.status_code == 302
    assert Run.objects.get().workflow_run.inputs == {"a": 2.5, "j": {"k": [1, "é"]}, "s": None}


@pytest.mark.parametrize("agent", ["abc", "1.5", "", "1e999", "-1", "9" * 30, "²", " 1", "0x1"])
def test_a_new_chat_refuses_an_agent_that_is_no_id(alice, alice_web, agent):
    before = saved()
    r = alice_web.post("/chats/new/", {"agent": agent})
    assert r.status_code == 400
    assert "agent: " in r.content.decode()
    assert saved() == before


@pytest.mark.parametrize(
    "next_url",
    [
        "foo",
        "https://evil.example/",
        "//evil.example",
        "///evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "https:evil.example",
        "javascript:alert(1)",
        "/\t/evil.example",
        "/chats/\r\nSet-Cookie: a=b",
        "http://testserver/chats/",  # an absolute URL, even to this host, is not a path
    ],
)
def test_a_rename_refuses_a_next_that_leaves_the_site(alice, alice_web, next_url):
    thread = create_thread(owner=alice, agent=alice.agents.get(), title="Plans")
    before = saved()
    r = alice_web.post(f"/chats/{thread.pk}/rename/", {"title": "New", "next": next_url})
    assert r.status_code == 400
    assert "next: " in r.content.decode()
    assert "Location" not in r
    assert saved() == before


def test_a_rename_follows_a_next_on_the_site(alice, alice_web):
    thread = create_thread(owner=alice, agent=alice.agents.get(), title="Plans")
    r = alice_web.post(f"/chats/{thread.pk}/rename/", {"title": "New", "next": "/chats/?page=2"})
    assert (r.status_code, r["Location"]) == (302, "/chats/?page=2")
    thread.refresh_from_db()
    assert thread.title == "New"
    r = alice_web.post(f"/chats/{thread.pk}/rename/", {"title": "Newer"})
    assert (r.status_code, r["Location"]) == (302, f"/chats/{thread.pk}/")


def test_it_answers_413_to_a_body_over_the_upload_limit(alice_api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    r = alice_api.post("/api/agents/", {"name": "x" * 2000}, format="json")
    assert (r.status_code, r.json()["code"]) == (413, "too_large")
    assert not Agent.objects.filter(name="x" * 2000).exists()


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ('{"a": NaN}', "Numbers must be finite"),
        ('{"a": "\\u0000"}', "Null characters are not allowed"),
        ('{"a": "\\ud800"}', "Lone surrogates"),
        ("[" * 5000, "Nested deeper than"),
    ],
)
def test_the_admin_refuses_json_that_cannot_be_stored(alice, admin_client, config, reason):
    agents = Agent.objects.count()
    r = admin_client.post(
        "/admin/agents/agent/add/",
        {"owner": alice.pk, "name": "Admin's", "model": "demo", "tools": "[]", "config": config},
    )
    assert r.status_code == 200  # the form again, with the reason
    assert reason in r.content.decode()
    assert Agent.objects.count() == agents


def test_the_admin_refuses_a_workflow_definition_that_cannot_be_stored(alice, admin_client):
    r = admin_client.post(
        "/admin/workflows/workflow/add/",
        {"owner": alice.pk, "name": "W", "description": "", "definition": '{"a": NaN}'},
    )
    assert r.status_code == 200
    assert "Numbers must be finite" in r.content.decode()
    assert not Workflow.objects.exists()
