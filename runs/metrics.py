"""Relay's metrics as every process records them, like logging: an app declares its metrics
(`counter`, `histogram`, `gauge`) where it records them, and records with `inc`, `observe` and
`set`. The ops app serves them all at /metrics. Declare them at module level in a module that
every process imports once the apps are ready (the app's ready() imports it if nothing else
does): a web process shows only the metrics it knows of.

The web processes and the workers run on any number of machines, so nothing is kept per
process: what they record is added to one Redis hash (HINCRBY, HINCRBYFLOAT), which any web
process reads at scrape time. A process adds up what it records in memory and sends it in one
pipeline at `flush()`: when a run's start or end commits (ops/receivers.py), at the end of a
reaper pass, a schedule's fire and every Celery task (runs/tasks.py), at a scrape, and at exit.
So a run costs two round trips (its start, its end), however many tool calls and retries it has.

A gauge whose value the database or Redis holds exactly (runs active, queue lengths) is read at
scrape time instead: `gauge(..., read=fn)`, where fn returns a number, or {label values: number}.
Another app registers its own the same way, from its ready().

Labels whose values are not bounded by the code (tool names: MCP servers bring their own) are
`capped`: the first METRICS_LABEL_VALUES_MAX values any process records are kept (a Redis set
shared by all), and the others are folded into "other", so a model that invents tool names
cannot grow the series without bound."""

import atexit
import json
import logging
import math
import threading
from dataclasses import dataclass
from functools import cache

import redis
from django.conf import settings

log = logging.getLogger(__name__)

KEY = "relay:metrics"  # every counter, histogram bucket and stored gauge: one field each
OTHER = "other"
VALUE_MAX = 100  # characters of a label value


def values_key(label):
    """The values of a capped label admitted so far, shared by every metric that has it."""
    return f"relay:metrics:values:{label}"


# Admits each value (ARGV[2..]) into the set while it holds fewer than ARGV[1]: 1 if it is in.
ADMIT = """
local admitted = {}
for i = 2, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 1 then
    admitted[#admitted + 1] = 1
  elseif redis.call('SCARD', KEYS[1]) < tonumber(ARGV[1]) then
    redis.call('SADD', KEYS[1], ARGV[i])
    admitted[#admitted + 1] = 1
  else
    admitted[#admitted + 1] = 0
  end
end
return admitted
"""


def enabled():
    return settings.METRICS_ENABLED


@dataclass(eq=False)
class Metric:
    name: str
    help: str
    type: str  # counter, histogram, gauge
    labels: tuple = ()
    buckets: tuple = ()  # a histogram's upper bounds, +Inf implied
    capped: tuple = ()
    read: object = None  # a scrape-time gauge: fn() -> number | {label values: number} | None
    # what `read` reads (database, redis, broker): relay_metrics_source_up says when it fails
    source: str = ""

    def inc(self, amount=1, **labels):
        if enabled():
            _buffer.add(self, "", self._values(labels), amount)

    def observe(self, value, **labels):
        if not enabled():
            return
        values = self._values(labels)
        bound = next((float(b) for b in self.buckets if value <= b), math.inf)
        _buffer.add(self, f"le={bound!r}", values, 1)
        _buffer.add(self, "sum", values, value)
        _buffer.add(self, "count", values, 1)

    def set(self, value, **labels):
        if enabled():
            _buffer.put(self, self._values(labels), value)

    def _values(self, labels):
        if labels.keys() != set(self.labels):
            raise ValueError(f"{self.name} takes the labels {self.labels}, not {tuple(labels)}")
        return tuple(str(labels[name])[:VALUE_MAX] for name in self.labels)


_catalogue: dict[str, Metric] = {}


def _declare(metric):
    if not metric.name.startswith("relay_"):
        raise ValueError(f"{metric.name}: Relay's metrics are named relay_...")
    known = _catalogue.get(metric.name)
    if known is not None:
        shape = (metric.type, metric.labels, metric.buckets)
        if (known.type, known.labels, known.buckets) != shape:
            raise ValueError(f"{metric.name} is declared already, differently")
        return known
    _catalogue[metric.name] = metric
    return metric


def counter(name, help, labels=(), capped=()):
    return _declare(Metric(name, help, "counter", tuple(labels), capped=tuple(capped)))


def histogram(name, help, buckets, labels=(), capped=()):
    return _declare(
        Metric(name, help, "histogram", tuple(labels), tuple(buckets), capped=tuple(capped))
    )


def gauge(name, help, labels=(), read=None, source=""):
    """A gauge: `set()` stores its value in Redis (last write wins), or, with `read`, it is
    read at scrape time from what `source` names."""
    return _declare(Metric(name, help, "gauge", tuple(labels), read=read, source=source))


def catalogue():
    return list(_catalogue.values())


class Buffer:
    """What this process recorded since its last flush, added up: {(metric, part, label values):
    amount}, and the stored gauges' last values. Worker threads record at once: a lock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._sums = {}
        self._sets = {}
        self._admitted = {}  # capped label -> values known in, in this process
        self._folded = {}  # capped label -> values known out

    def add(self, metric, part, values, amount):
        key = (metric, part, values)
        with self._lock:
            self._sums[key] = self._sums.get(key, 0) + amount

    def put(self, metric, values, value):
        with self._lock:
            self._sets[metric, values] = value

    def flush(self):
        if not (self._sums or self._sets):
            return
        with self._lock:
            sums, self._sums = self._sums, {}
            sets, self._sets = self._sets, {}
        try:
            _send(self._capped(sums), sets)
        except redis.RedisError as exc:
            log.warning("could not record metrics: %s", exc)
            with self._lock:  # sent at the next flush: counts are not lost to a short outage
                for key, amount in sums.items():
                    self._sums[key] = self._sums.get(key, 0) + amount
                for key, value in sets.items():
                    self._sets.setdefault(key, value)
        except Exception:  # a flush runs on commit of a run's end: it must never fail that
            log.exception("could not record metrics")

    def _capped(self, sums):
        """`sums` with the capped labels' values beyond the cap folded into "other": a round
        trip to admit values this process has not met yet, none otherwise."""
        unknown = {}
        for metric, _, values in sums:
            for label, value in _capped_values(metric, values):
                met = self._admitted.get(label, ()), self._folded.get(label, ())
                if not any(value in known for known in met):
                    unknown.setdefault(label, set()).add(value)
        for label, candidates in unknown.items():
            candidates = sorted(candidates)
            admitted = _admit_script()(
                keys=[values_key(label)], args=[settings.METRICS_LABEL_VALUES_MAX, *candidates]
            )
            for value, isin in zip(candidates, admitted, strict=True):
                known = self._admitted if isin else self._folded
                known.setdefault(label, set()).add(value)
        folded = {}
        for (metric, part, values), amount in sums.items():
            if metric.capped:
                values = tuple(
                    OTHER if name in metric.capped and v in self._folded.get(name, ()) else v
                    for name, v in zip(metric.labels, values, strict=True)
                )
            folded[metric, part, values] = folded.get((metric, part, values), 0) + amount
        return folded


def _capped_values(metric, values):
    return [(n, v) for n, v in zip(metric.labels, values, strict=True) if n in metric.capped]


def field_name(name, part, values):
    return f"{name}|{part}|{json.dumps(values, separators=(',', ':'))}"


def _send(sums, sets):
    # MULTI/EXEC: all of it or none, so what a failed flush keeps for the next is not counted
    # twice. Counts are whole numbers (HINCRBY); only a histogram's sum is not.
    with client().pipeline(transaction=True) as pipe:
        for (metric, part, values), amount in sums.items():
            name = field_name(metric.name, part, list(values))
            if part == "sum":
                pipe.hincrbyfloat(KEY, name, amount)
            else:
                pipe.hincrby(KEY, name, int(amount))
        for (metric, values), value in sets.items():
            pipe.hset(KEY, field_name(metric.name, "", list(values)), value)
        pipe.execute()


_buffer = Buffer()


def flush():
    """Send what this process recorded: call it at the end of a unit of work."""
    _buffer.flush()


atexit.register(flush)


def stored():
    """What every process has recorded: {metric name: {(part, label values): number}}."""
    found = {}
    for name, value in client().hgetall(KEY).items():
        metric, part, values = name.split("|", 2)
        found.setdefault(metric, {})[part, tuple(json.loads(values))] = float(value)
    return found


@cache
def _client(url):
    # its own small pool: flushes are few (two a run), and this module stays below runs.stream
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=20, timeout=5, decode_responses=True, socket_connect_timeout=2,
        socket_timeout=5,
    )  # fmt: skip
    return redis.Redis(connection_pool=pool)


def client():
    return _client(settings.REDIS_URL)


@cache
def _admit_script_for(url):
    return _client(url).register_script(ADMIT)


def _admit_script():
    return _admit_script_for(settings.REDIS_URL)
