"""The OpenAPI schema's shared parts (/api/schema/, drf-spectacular): the error responses, added
to every operation by AutoSchema from what the operation takes, and the event streams of runs and
of threads, plain Django views that drf-spectacular cannot see."""

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers

from .models import Run


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField(required=False, help_text="Set when a client may act on it.")


def error(description):
    return OpenApiResponse(ErrorSerializer, description=description)


THREAD_BUSY = error(
    '`thread_busy`: the thread has an active run or queued messages (start with `"if_busy":'
    ' "interrupt"` to stop it first, or `"enqueue"` to queue the message after it).'
)
TOO_MANY_RUNS = error("`too_many_runs`: you have as many active runs as allowed.")
QUEUE_UNAVAILABLE = error("`queue_unavailable`: the run queue cannot be reached; retry shortly.")
TOO_MANY_RUNS_OR_FOLLOW_UPS = error(
    "`too_many_runs`: you have as many active runs as allowed; `too_many_follow_ups`: the thread"
    " has as many queued messages as allowed (RUN_FOLLOW_UPS_MAX)."
)
RUN_START_ERRORS = {409: THREAD_BUSY, 429: TOO_MANY_RUNS, 503: QUEUE_UNAVAILABLE}
# a start that may queue its message (`if_busy: "enqueue"`: an agent run's)
QUEUEING_START_ERRORS = {**RUN_START_ERRORS, 429: TOO_MANY_RUNS_OR_FOLLOW_UPS}

IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    location=OpenApiParameter.HEADER,
    required=False,
    description="Any 1 to 255 printable ASCII characters, new for each new request: the same key"
    " with the same body within 24 h answers 200 with the first answer's body and starts"
    " nothing (docs/runs.md#idempotent-starts).",
    pattern=r"^[ -~]{1,255}$",
)
IDEMPOTENCY_ERRORS = {
    422: error(
        "`idempotency_key_reused`: the Idempotency-Key was used with another body (`field`:"
        " `Idempotency-Key`)."
    ),
}
IDEMPOTENCY_IN_PROGRESS = (
    "`idempotency_key_in_progress`: a request with this Idempotency-Key is still in progress."
)


REPLAYED = "The answer of the first request with this Idempotency-Key and body: nothing started."


def idempotent_start(answer, errors, description=REPLAYED):
    """The responses of a start that takes an Idempotency-Key: `answer` (202) and, replayed, 200;
    `errors` with the key's 409 and 422 added."""
    conflict = errors.get(409)
    busy = (conflict.description + "; " if conflict else "") + IDEMPOTENCY_IN_PROGRESS
    return {
        200: OpenApiResponse(answer, description=description),
        202: answer,
        **errors,
        409: error(busy),
        **IDEMPOTENCY_ERRORS,
    }


VALIDATION_ERROR = {
    "type": "object",
    "description": (
        "Each field that was refused, with the reasons: a list of messages, or an object of the"
        ' same shape for a nested field (`{"config": {"demo": {"words": [...]}}}`).'
        " `non_field_errors` is for a reason that concerns several fields. An error that is no"
        " field's (a malformed body, a thread without an agent) has `detail` and `code` instead,"
        " and `field` when one field is to blame."
    ),
    "properties": {
        "non_field_errors": {"type": "array", "items": {"type": "string"}},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "field": {"type": "string"},
    },
    "additionalProperties": {"oneOf": [{"type": "array"}, {"type": "object"}]},
    "example": {"message": ["This field may not be blank."]},
}


class AutoSchema(SpectacularAutoSchema):
    """Adds the errors any operation may answer, from what it takes: 400 where it reads a body
    or query parameters, 401 and 429 (the failed-authentication throttle) where it needs a user,
    403 where a session needs a CSRF token, 404 where it names an object or a page, 413 where it
    takes a body. The errors particular to an operation (409, 429, 503) are in its own
    @extend_schema."""

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        auth = self.get_auth()
        body = self._get_request_body() is not None
        common = {
            400: body or self.get_override_parameters(),
            401: bool(auth),
            403: bool(auth) and self.method not in ("GET", "HEAD", "OPTIONS"),
            404: "{" in self.path or self._is_list_view(),
            413: body,
            429: bool(auth),
        }
        for status, applies in common.items():
            if applies:
                responses.setdefault(str(status), self._error_response(status))
        return dict(sorted(responses.items()))

    def _error_response(self, status):
        if status == 400:
            component = ResolvedComponent(
                name="ValidationError",
                type=ResolvedComponent.SCHEMA,
                object="ValidationError",
                schema=VALIDATION_ERROR,
            )
            self.registry.register_on_missing(component)
            return {
                "description": "Invalid input: nothing was saved.",
                "content": {"application/json": {"schema": component.ref}},
            }
        description = {
            401: "No credentials, or credentials that are not valid.",
            403: "A session without its CSRF token (token authentication needs none).",
            404: "No such object among yours (another user's is not found either), or no such"
            " page.",
            413: "`too_large`: the body is larger than the upload limit.",
            429: "Too many failed authentications from this address; `Retry-After` says when"
            " to try again.",
        }[status]
        return self._get_response_for_code(error(description), str(status))


def _object(**properties):
    return {"type": "object", "properties": properties, "required": list(properties)}


def _data(**properties):
    """An event's `data`: JSON text, this object in it (with the run's id)."""
    schema = _object(run={"type": "string", "format": "uuid"}, **properties)
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


TEXT, INTEGER, ANY = {"type": "string"}, {"type": "integer"}, {}
TEXT_OR_NULL = {"type": ["string", "null"]}
REQUEST = {
    "id": INTEGER, "kind": {"enum": ["approval", "question"]}, "call": TEXT, "name": TEXT,
    "arguments": TEXT, "question": TEXT,
}  # fmt: skip
STEP = {"step": TEXT, "index": INTEGER, "status": TEXT, "output": ANY, "error": TEXT}

# type: (what it means, the schema of its data)
EVENTS = {
    "stream-open": (
        "No data, no id. The first event of every connection, after a padding comment that makes"
        " proxies pass the stream on at once.",
        {"const": ""},
    ),
    "run.status": (
        "Every transition. The last event of a run is its terminal status (`completed`,"
        " `failed`, `stopped`); the server then ends the stream. `waiting`: the run asked a"
        " person something (`input.requested`) and holds no worker until the answer; it is"
        " `queued` again once answered. `attempt` counts the run's claims by a worker.",
        _data(status={"enum": list(Run.Status.values)}, error=TEXT, attempt=INTEGER),
    ),
    "message.delta": (
        "The next piece of the text of message `message`.",
        _data(message=INTEGER, text=TEXT),
    ),
    "message.done": (
        "A message, saved (`html`: an assistant's Markdown, rendered and sanitized;"
        " `interrupted`: a reply a lost worker left half written, kept as it was).",
        _data(
            message=_object(
                html=TEXT,
                id=INTEGER,
                role=TEXT,
                content=TEXT,
                tool_calls=ANY,
                tool_call_id=TEXT,
                name=TEXT,
                is_error={"type": "boolean"},
                interrupted={"type": "boolean"},
                created={"type": "string", "format": "date-time"},
            )
        ),
    ),
    "tool.started": (
        "A tool call begins (`arguments`: JSON text; `server`: the MCP server the tool comes"
        " from, null for a built-in). The calls of one model turn run at once.",
        _data(call=TEXT, name=TEXT, arguments=TEXT, server=TEXT_OR_NULL),
    ),
    "tool.done": (
        "Its result: `output`, or `error`.",
        _data(call=TEXT, name=TEXT, output=TEXT_OR_NULL, error=TEXT_OR_NULL, server=TEXT_OR_NULL),
    ),
    "model.retry": (
        "A model call failed before any output (connection, timeout, 429, 5xx) and is tried"
        " again in `delay` seconds; `attempt` counts from 1, up to LLM_MAX_RETRIES.",
        _data(attempt=INTEGER, delay={"type": "number"}, reason=TEXT),
    ),
    "input.requested": (
        "The run asks a person: to approve a tool call (`kind` `approval`), or to answer"
        " `question` (`question`, the `ask_user` tool). Answer with"
        " `POST /api/runs/{id}/respond/`.",
        _data(request=_object(**REQUEST)),
    ),
    "input.resolved": (
        "What became of a request: `approved` (with `approved_arguments` if edited),"
        " `denied` (with a `reason`), `answered` (with the `answer`), `cancelled` (the run was"
        " stopped) or `expired` (RUN_WAIT_TIMEOUT).",
        _data(
            request=_object(
                **REQUEST, status=TEXT, approved_arguments=TEXT, reason=TEXT, answer=TEXT
            )
        ),
    ),
    "usage": (
        "The tokens this attempt used (a run that waited has one such event per attempt; the"
        " run's totals are on the run).",
        _data(input_tokens=INTEGER, output_tokens=INTEGER),
    ),
    "step.started": ("A workflow step begins.", _data(**STEP)),
    "step.done": (
        "It ended; `reused`: a retry kept the output of an earlier run.",
        _data(**STEP, reused={"type": "boolean"}),
    ),
    "stream-reset": (
        "The id you gave is older than the log (or the log has expired): reload the thread's"
        " messages from the API. The stream goes on after it while the run is active.",
        {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": _object(channels={"type": "array", "items": TEXT}),
        },
    ),
}


def _fields(data, keep_run=False):
    properties = data.get("contentSchema", {}).get("properties", {})
    return [name for name in properties if keep_run or name != "run"]


EVENT_STREAM = (
    "The run's events over Server-Sent Events (`text/event-stream`). Event ids are"
    " `run-<id>:<n>`, n = 1, 2, 3… without gaps; send the last one you have in `Last-Event-ID`"
    " (or `?lastEventId=`) to get exactly the events after it, none to start from the run's"
    " first event. Comments (`: keep-alive`) keep an idle connection open. An event's `data` is"
    " JSON, an object with the run's id in `run` and these fields:\n\n"
    "| event | data | what it is |\n| --- | --- | --- |\n"
    + "".join(
        f"| `{name}` | {', '.join(f'`{k}`' for k in _fields(data))} | {description} |\n"
        for name, (description, data) in EVENTS.items()
    )
)


# A thread's stream (runs.events.thread_events): events without ids
THREAD_EVENTS = {
    "stream-open": EVENTS["stream-open"],
    "run.started": (
        "A run is active on the thread: the one active when the stream opens (or reconnects),"
        " then each run that starts on it. Follow it on `/api/runs/{run}/events/`. The same run"
        " may be told again after a reconnection.",
        {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": _object(
                run={"type": "string", "format": "uuid"}, thread={"type": "integer"}
            ),
        },
    ),
}

THREAD_EVENT_STREAM = (
    "The runs that start on the thread, over Server-Sent Events (`text/event-stream`), for a"
    " page that shows the thread: a run started elsewhere (another tab, the API, a schedule)"
    " is told at once. At each connection the stream first tells the thread's active run, if"
    " any, so a run that started before it opened is not missed; it keeps no log, so its"
    " events have no ids and there is nothing to resume. The stream stays open (comments,"
    " `: keep-alive`, keep an idle one open) and counts among your open streams as a run's"
    " does. An event's `data` is JSON:\n\n"
    "| event | data | what it is |\n| --- | --- | --- |\n"
    + "".join(
        f"| `{name}` | {', '.join(f'`{k}`' for k in _fields(data, keep_run=True))}"
        f" | {description} |\n"
        for name, (description, data) in THREAD_EVENTS.items()
    )
)


def _event(name, data, with_id=True):
    """One event as schemathesis (and an EventSource) parses it: {"event", "data", "id"}."""
    properties = {"event": {"const": name}, "data": data}
    if with_id and name != "stream-open":
        properties["id"] = {"type": "string", "pattern": r"^run-[0-9a-f-]+:[0-9]+$"}
    return {"type": "object", "title": name, "properties": properties, "required": list(properties)}


def _drop_any_or_null(schema):
    """drf-spectacular writes a nullable JSONField as oneOf [{}, null] under OpenAPI 3.1, which
    no value can match (null matches both): any value, null included, is {}."""
    if isinstance(schema, dict):
        if schema.get("oneOf") in ([{}, {"type": "null"}], [{"type": "null"}, {}]):
            del schema["oneOf"]
        for value in schema.values():
            _drop_any_or_null(value)
    elif isinstance(schema, list):
        for value in schema:
            _drop_any_or_null(value)


def complete_schema(result, generator, request, public):
    """drf-spectacular postprocessing hook: describe runs.events.run_events and thread_events
    (and mend the nullable JSON fields)."""
    _drop_any_or_null(result)
    error_ref = {"$ref": "#/components/schemas/Error"}

    def error(description):
        return {"description": description, "content": {"application/json": {"schema": error_ref}}}

    result["paths"]["/api/runs/{run_id}/events/"] = {
        "get": {
            "operationId": "runs_events",
            "summary": "Follow a run's events",
            "description": EVENT_STREAM,
            "tags": ["runs"],
            "parameters": [
                {
                    "name": "run_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "format": "uuid"},
                },
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "description": "The last event you have: `run-<id>:<n>`.",
                    "schema": {"type": "string"},
                },
                {
                    "name": "lastEventId",
                    "in": "query",
                    "description": "The same, for a client that cannot set the header.",
                    "schema": {"type": "string"},
                },
            ],
            "security": [{name: []} for name in result["components"]["securitySchemes"]],
            "responses": {
                "200": {
                    "description": "The events after the last one you have, then the live ones.",
                    "content": {
                        "text/event-stream": {
                            "schema": {"oneOf": [_event(n, d) for n, (_, d) in EVENTS.items()]}
                        }
                    },
                },
                "204": {
                    "description": "You have the run's terminal event: nothing more will come"
                    " (an EventSource stops reconnecting)."
                },
                "400": error("`invalid_last_event_id`: not an id of this run's events."),
                "401": error("No credentials, or credentials that are not valid."),
                "404": error("No such run among yours."),
                "429": error(
                    "`too_many_streams`: you have as many streams open as allowed; or too many"
                    " failed authentications from this address."
                ),
                "503": error("The event log cannot be reached; retry shortly."),
            },
        }
    }
    result["paths"]["/api/threads/{thread_id}/events/"] = {
        "get": {
            "operationId": "threads_events",
            "summary": "Follow the runs that start on a thread",
            "description": THREAD_EVENT_STREAM,
            "tags": ["threads"],
            "parameters": [
                {"name": "thread_id", "in": "path", "required": True, "schema": INTEGER},
            ],
            "security": [{name: []} for name in result["components"]["securitySchemes"]],
            "responses": {
                "200": {
                    "description": "The thread's active run, if any, then each run that starts.",
                    "content": {
                        "text/event-stream": {
                            "schema": {
                                "oneOf": [
                                    _event(n, d, with_id=False)
                                    for n, (_, d) in THREAD_EVENTS.items()
                                ]
                            }
                        }
                    },
                },
                "401": error("No credentials, or credentials that are not valid."),
                "404": error("No such thread among yours."),
                "429": error(
                    "`too_many_streams`: you have as many streams open as allowed; or too many"
                    " failed authentications from this address."
                ),
                "503": error("The stream cannot be opened (Redis is unreachable); retry shortly."),
            },
        }
    }
    return result
