"""The Redis side of a run: its event log (a Redis Stream per channel, the storage class of
django-eventstream), the events a run emits, and its stop flag."""

import json
import logging
import time
import uuid
from functools import cache

import redis
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder

from . import eventstream, grip, metrics
from .eventstream import Event, EventDoesNotExist, StorageBase, sse_encode_event
from .models import Run

log = logging.getLogger(__name__)

STOP_CHANNEL = "relay:run-stop"

# The next id is one more than the last entry's (trimming always keeps the newest), so id and
# XADD are one atomic step however many processes append to the channel, and a run's first
# event (ARGV[8]) starts its log at 1. Otherwise, when the log is gone (Redis restarted without
# persistence, or the log was dropped) or was written by another Redis server (KEYS[2] keeps
# the writer's run_id: a restart that restored it from disk may have lost its last appends, and
# so may a failover to a replica), the numbering jumps to the server's clock in milliseconds,
# beyond every id the log had, so a client's id from before is never taken for an event of the
# new numbering: it gets stream-reset instead of a silent gap. Such ids stay below 2^53, exact
# as JavaScript numbers.
# KEYS[2] also counts the bytes of the entries' type and data: once over ARGV[7] (or ARGV[1]
# entries), the oldest entries go, never the newest, so the log holds at most the cap plus its
# newest event, and a client whose id is older than the log gets stream-reset.
# With ARGV[6] set it also publishes the event on django-eventstream's pub/sub channel
# (ARGV[10]), in the message format its listener reads (the field names for the channel, type,
# data and id: ARGV[11..14], named in runs/eventstream.py), saving the round trip of a
# separate PUBLISH. KEYS[3] marks the run's end: a terminal event (ARGV[9]) appends only if it
# was not set yet, so a run ends once in its log whoever announces it (the process that ended
# it, or the repair after that process died), and nothing appends after it (a late tool
# result, a worker that lost its run).
APPEND = """
if ARGV[9] == '1' then
  if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[4]) then return 0 end
elseif redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
local server = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local n = 1
if #last > 0 then
  n = tonumber(string.match(last[1][1], '^(%d+)')) + 1
end
if (#last > 0 and redis.call('HGET', KEYS[2], 'server') ~= server)
    or (#last == 0 and ARGV[8] == '0') then
  local now = redis.call('TIME')
  n = math.max(n, tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
end
local id = string.format('%d', n)
redis.call('XADD', KEYS[1], id .. '-0', 't', ARGV[2], 'd', ARGV[3])
redis.call('HSET', KEYS[2], 'server', server)
local bytes = redis.call('HINCRBY', KEYS[2], 'bytes', #ARGV[2] + #ARGV[3])
local count = redis.call('XLEN', KEYS[1])
local cap, maxlen = tonumber(ARGV[7]), tonumber(ARGV[1])
if bytes > cap or count > maxlen then
  local cut
  while count > 1 and (bytes > cap or count > maxlen) do
    local batch = redis.call('XRANGE', KEYS[1], cut and ('(' .. cut) or '-', '+', 'COUNT', 16)
    for _, entry in ipairs(batch) do
      if count == 1 or (bytes <= cap and count <= maxlen) then break end
      bytes = bytes - #entry[2][2] - #entry[2][4]
      count = count - 1
      cut = entry[1]
    end
  end
  local keep = tonumber(string.match(cut, '^(%d+)')) + 1
  redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', keep) .. '-0')
  redis.call('HSET', KEYS[2], 'bytes', bytes)
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
if ARGV[6] == '1' then
  local message = {}
  message[ARGV[11]], message[ARGV[12]], message[ARGV[13]], message[ARGV[14]] =
    ARGV[5], ARGV[2], ARGV[3], id
  redis.call('PUBLISH', ARGV[10], cjson.encode(message))
end
return id
"""


@cache
def client():
    """One connection pool per process, shared by every thread. A worker runs a hundred runs
    or more in threads: past the pool's size they wait for a connection instead of failing."""
    pool = redis.BlockingConnectionPool.from_url(
        settings.REDIS_URL,
        max_connections=settings.REDIS_POOL_SIZE,
        timeout=10,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=10,
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)


@cache
def _append_script():
    return client().register_script(APPEND)


def log_key(channel):
    # the braces keep a channel's keys in one Redis Cluster slot
    return f"relay:events:{{{channel}}}"


def meta_key(channel):
    """The log's size in bytes, and the Redis server that wrote it."""
    return f"relay:log:{{{channel}}}"


def ended_key(channel):
    return f"relay:ended:{{{channel}}}"


def _entry_id(entry_id):
    return int(entry_id.split("-", 1)[0])


class StreamStorage(StorageBase):
    """Event log for django-eventstream on Redis Streams: ids 1, 2, 3... per channel, no gaps,
    capped at RUN_EVENTS_MAX_BYTES (and RUN_EVENTS_MAXLEN entries); an id older than the log,
    ahead of it, or from a log Redis lost raises EventDoesNotExist (the client gets
    stream-reset and reloads from the database)."""

    def append_event(self, channel, event_type, data, publish=False, once=False, first=True):
        """The appended event, or None when the channel's terminal event is in already (`once`:
        this is a terminal event, to be appended once). With
        `first` false (emit: every event of a run but its first) a log made for the event is
        one that Redis lost, numbered beyond it."""
        # Live logs outlive the longest run; retain() shortens that once the run ends.
        ttl = settings.RUN_TIME_LIMIT + settings.RUN_EVENTS_RETENTION
        args = [settings.RUN_EVENTS_MAXLEN, event_type, data, ttl, channel, int(publish),
                settings.RUN_EVENTS_MAX_BYTES, int(first), int(once),
                eventstream.PUBSUB_CHANNEL, *eventstream.MESSAGE_FIELDS]  # fmt: skip
        keys = [log_key(channel), meta_key(channel), ended_key(channel)]
        n = _append_script()(keys=keys, args=args)
        return Event(channel, event_type, data, id=int(n)) if int(n) else None

    def get_events(self, channel, last_id, limit=100):
        last_id = int(last_id)
        with client().pipeline() as pipe:
            pipe.xrevrange(log_key(channel), count=1)
            pipe.xrange(log_key(channel), min=f"({last_id}-0", count=limit)
            newest, entries = pipe.execute()
        current = _entry_id(newest[0][0]) if newest else 0
        if last_id > current:
            raise EventDoesNotExist(f"{channel}:{last_id} is ahead of the log", current)
        if last_id == current:
            return []
        if not entries or _entry_id(entries[0][0]) != last_id + 1:
            raise EventDoesNotExist(f"{channel}:{last_id} is older than the log", current)
        return [Event(channel, f["t"], f["d"], id=_entry_id(i)) for i, f in entries]

    def get_current_id(self, channel):
        newest = self.newest(channel)
        return newest.id if newest else 0

    def newest(self, channel):
        """The channel's last event, or None when its log is empty or gone."""
        entries = client().xrevrange(log_key(channel), count=1)
        if not entries:
            return None
        entry_id, fields = entries[0]
        return Event(channel, fields["t"], fields["d"], id=_entry_id(entry_id))


def emit(run_id, event_type, **data):
    """Append an event to the run's log and deliver it live, in one round trip (what
    django-eventstream's send_event does in two), and through Pushpin in GRIP mode. A run's
    terminal `run.status` goes in once. A Redis outage loses the live copy only: the database
    keeps every message and the run's status."""
    channel = f"run-{run_id}"
    payload = json.dumps({"run": str(run_id), **data}, cls=DjangoJSONEncoder)
    once = event_type == "run.status" and data.get("status") in Run.TERMINAL
    # a run's log begins with its queued status; queued again (after a wait) is not a beginning
    first = event_type == "run.status" and data.get("status") == Run.Status.QUEUED
    first = first and not data.get("attempt")
    storage = StreamStorage()
    try:
        event = storage.append_event(
            channel, event_type, payload, publish=True, once=once, first=first
        )
    except redis.RedisError as exc:
        log.warning("run %s: could not emit %s: %s", run_id, event_type, exc)
        return
    if event is None:
        return  # its terminal event is in already
    if event_type in FIRST_EVENTS and _awaiting:
        _first_event(str(run_id))
    if grip.enabled():
        content = sse_encode_event(event_type, payload, event_id=f"{channel}:{event.id}")
        grip.publish(channel, event.id, content, close=is_terminal(event))


# What a person sees first of a run, once it is running: text, a tool call, a step, a question.
FIRST_EVENTS = {"message.delta", "message.done", "tool.started", "step.started", "input.requested"}
TIME_TO_FIRST_EVENT = metrics.histogram(
    "relay_run_time_to_first_event_seconds",
    "From a run's start (its POST) to its first event of output (text, tool call, step,"
    " question), on its first attempt",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
    labels=("kind",),
)
_awaiting = {}  # run id -> (kind, start as a Unix time), runs of this process awaiting theirs


def await_first_event(run):
    """Observe the run's time to its first event of output when this process emits it: a run
    on its first attempt (a later attempt, after a wait or a lost worker, is not a first)."""
    if run.attempt == 1 and metrics.enabled():
        _awaiting[str(run.pk)] = (run.kind, run.created.timestamp())


def forget_first_event(run_id):
    _awaiting.pop(str(run_id), None)


def _first_event(run_id):
    awaited = _awaiting.pop(run_id, None)
    if awaited is not None:
        kind, start = awaited
        TIME_TO_FIRST_EVENT.observe(max(0.0, time.time() - start), kind=kind)


def thread_channel(thread_id):
    return f"thread-{thread_id}"


def announce_run_started(run, follow_up=None):
    """Tell the open streams of the run's thread (runs/events.py, thread_events) that it
    started: live only, on django-eventstream's pub/sub channel, so nothing is kept per thread
    in Redis. A stream that opens later learns of the run from the database, and so does one
    whose listener lost the pub/sub connection (it reads the database again). A run that a
    queued message (`follow_up`, its id) started says which."""
    channel = thread_channel(run.thread_id)
    started = {"run": str(run.id), "thread": run.thread_id}
    if follow_up:
        started["follow_up"] = follow_up
    payload = json.dumps(started)
    fields = (channel, "run.started", payload, None)  # no id: the thread stream keeps no log
    message = json.dumps(dict(zip(eventstream.MESSAGE_FIELDS, fields, strict=True)))
    try:
        client().publish(eventstream.PUBSUB_CHANNEL, message)
    except redis.RedisError as exc:  # its pages see the run when their stream reconnects
        log.warning("run %s: could not announce it on its thread: %s", run.id, exc)


def emit_delta(run_id, message_id, text):
    """Announce `text` added to an assistant message: the one writer of message.delta, whose
    format logged_texts() reads back."""
    emit(run_id, "message.delta", message=message_id, text=text)


def logged_texts(run_id):
    """The text of each assistant message as the run's event log has it, by message id: its
    message.delta events joined. Empty when the log is gone or no longer holds its start (Redis
    lost it, or the cap trimmed it). The reaper salvages a lost worker's reply with it."""
    try:
        events = StreamStorage().get_events(f"run-{run_id}", 0, limit=settings.RUN_EVENTS_MAXLEN)
    except (EventDoesNotExist, redis.RedisError):
        return {}
    texts = {}
    for event in events:
        if event.type == "message.delta":
            data = json.loads(event.data)
            texts[data["message"]] = texts.get(data["message"], "") + data["text"]
    return texts


def unannounced(run_ids):
    """The ids among `run_ids` whose log exists but does not end with a terminal event."""
    with client().pipeline(transaction=False) as pipe:
        for run_id in run_ids:
            pipe.xrevrange(log_key(f"run-{run_id}"), count=1)
        newest = pipe.execute()
    return {
        run_id
        for run_id, entries in zip(run_ids, newest, strict=True)
        if entries and not is_terminal(Event("", entries[0][1]["t"], entries[0][1]["d"]))
    }


def retained_key(user_id):
    return f"relay:retained:{user_id}"


def retain(run_id, owner_id):
    """Give a finished run's log its retention window, and drop the logs of its owner's older
    ended runs beyond the newest RUN_EVENTS_RETAINED_PER_USER: one user's retained logs hold at
    most that many times RUN_EVENTS_MAX_BYTES, however many runs they end in an hour. A client
    of a dropped log gets stream-reset and reloads the ended run from the database."""
    channel = f"run-{run_id}"

    retention, kept = settings.RUN_EVENTS_RETENTION, settings.RUN_EVENTS_RETAINED_PER_USER
    try:
        with client().pipeline() as pipe:
            pipe.expire(log_key(channel), retention)
            pipe.expire(meta_key(channel), retention)
            if owner_id is not None:
                key, now = retained_key(owner_id), time.time()
                pipe.zadd(key, {channel: now})
                pipe.zremrangebyscore(key, "-inf", now - retention)  # expired by themselves
                pipe.zrange(key, 0, -kept - 1)
                pipe.zremrangebyrank(key, 0, -kept - 1)
                pipe.expire(key, retention)
            replies = pipe.execute()
        dropped = replies[4] if owner_id is not None else []
        if dropped:
            client().delete(*[k for c in dropped for k in (log_key(c), meta_key(c))])
    except redis.RedisError as exc:
        log.warning("run %s: could not set the log's retention: %s", run_id, exc)


def is_terminal(event):
    return event.type == "run.status" and json.loads(event.data)["status"] in Run.TERMINAL


# A user's open event streams (direct mode): a sorted set of slot ids, each scored with the time
# (Redis' clock, in ms) it lapses unless its stream renews it, so the slots of a web process
# that died free themselves within a lease. ARGV[3] = '1' takes a new slot, if under the cap.
# KEYS[2] holds every user's slots the same way (ARGV[5]: user and slot), for the count of open
# streams across the web processes (relay_streams_open): one Redis, as the rest of Relay's.
SLOT = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
if ARGV[3] == '1' and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ms)
redis.call('ZADD', KEYS[2], ms + tonumber(ARGV[2]), ARGV[5])
return 1
"""
OPEN_STREAMS = "relay:streams:open"

# The streams open now: the slots that have not lapsed.
OPEN = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
return redis.call('ZCARD', KEYS[1])
"""


@cache
def _slot_script():
    return client().register_script(SLOT)


def _slot(user_id, slot, take):
    # renewed at every keep-alive period at the latest: three of them make a lease
    lease = int(3000 * settings.SSE_KEEPALIVE_SECONDS)
    args = [settings.SSE_MAX_STREAMS_PER_USER, lease, int(take), slot, f"{user_id}:{slot}"]
    return _slot_script()(keys=[f"relay:streams:{user_id}", OPEN_STREAMS], args=args)


def stream_slot_take(user_id):
    """A slot for one more open stream of the user's, or None at SSE_MAX_STREAMS_PER_USER."""
    slot = uuid.uuid4().hex
    return slot if _slot(user_id, slot, take=True) else None


def stream_slot_renew(user_id, slot):
    _slot(user_id, slot, take=False)


def stream_slot_free(user_id, slot):
    with client().pipeline(transaction=False) as pipe:
        pipe.zrem(f"relay:streams:{user_id}", slot)
        pipe.zrem(OPEN_STREAMS, f"{user_id}:{slot}")
        pipe.execute()


def open_streams():
    """How many event streams the web processes hold open, all together (GRIP mode: Pushpin
    holds the run streams, and counts them itself)."""
    return client().eval(OPEN, 1, OPEN_STREAMS)


def stop_key(run_id):
    return f"relay:stop:{run_id}"


def request_stop(run_id):
    """Raise the run's stop flag (read by the worker between chunks) and nudge the workers so
    the one running it reacts at once."""
    with client().pipeline() as pipe:
        pipe.set(stop_key(run_id), "1", ex=settings.RUN_TIME_LIMIT + 3600)
        pipe.publish(STOP_CHANNEL, str(run_id))
        pipe.execute()


def stop_flags(run_ids):
    """The ids among `run_ids` whose stop flag is up."""
    if not run_ids:
        return set()
    flags = client().mget([stop_key(r) for r in run_ids])
    return {run_id for run_id, flag in zip(run_ids, flags, strict=True) if flag}
