"""Cron expressions for schedules: validation, descriptions and fire times.

Pure Python on purpose (no Django), so the API, the admin, the beat sync and the fire task
all share one definition of what an expression means.

The DST rule. A schedule's slots are wall-clock times in its time zone, and each slot fires
once. Every wall-clock time is turned into an instant with zoneinfo's ``fold=0``:

* a time that does not exist (02:30 when clocks jump 02:00 -> 03:00) is read with the offset
  from before the jump, so it fires at 03:30, the same distance past the gap;
* a time that happens twice (02:30 when clocks go 03:00 -> 02:00) fires at its first
  occurrence only.

Days without a transition are plain. To keep croniter out of DST entirely, it only ever sees
naive local wall-clock times (on naive datetimes it does plain calendar arithmetic); the
conversion to instants happens afterwards, in ``to_instant``.

Day-of-month and day-of-week: when both are restricted, a date must match both. That is how
Celery's crontab (and so django-celery-beat, which sends the fires) evaluates them; classic
Unix cron fires when either matches. croniter is run with ``day_or=False`` to agree with beat.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

from cron_descriptor import Options, get_description
from croniter import CroniterBadDateError, CroniterError, croniter

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_WEEKDAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")

# L, W, #, ? (Quartz), H (Jenkins): accepted by some cron dialects, but not by Celery beat.
_NON_STANDARD = re.compile(r"[0-9]*(?:L|W|LW)|H.*|.*[#?].*")
_STANDARD_ONLY = "use 5-field standard cron only"
_DAY = timedelta(days=1)


@dataclass(frozen=True)
class _Field:
    name: str  # as shown to users
    celery_name: str  # as named by Celery's crontab and django-celery-beat's CrontabSchedule
    low: int
    high: int  # the largest value a user may write
    star_high: int  # where `*` and `a/n` stop (day-of-week: 7 is only an alias of 0)
    names: dict[str, int] = field(default_factory=dict)
    names_hint: str = ""


_FIELDS = (
    _Field("minute", "minute", 0, 59, 59),
    _Field("hour", "hour", 0, 23, 23),
    _Field("day-of-month", "day_of_month", 1, 31, 31),
    _Field(
        "month",
        "month_of_year",
        1,
        12,
        12,
        {name: number for number, name in enumerate(_MONTHS, 1)},
        " or month name (JAN-DEC)",
    ),
    _Field(
        "day-of-week",
        "day_of_week",
        0,
        7,
        6,
        {name: number for number, name in enumerate(_WEEKDAYS)},
        " or day name (SUN-SAT)",
    ),
)


class _FieldError(ValueError):
    pass


def validate(expression: str) -> list[str]:
    """Errors a user can act on; empty when the expression is valid."""
    if not isinstance(expression, str):
        return ["the cron expression must be a string"]
    parts = expression.split()
    if parts and parts[0].startswith("@"):
        return [f"{parts[0]!r} is not supported: {_STANDARD_ONLY} (e.g. '0 0 * * *' for daily)"]
    if len(parts) != len(_FIELDS):
        names = " ".join(f.name for f in _FIELDS)
        return [f"expected {len(_FIELDS)} fields ({names}), got {len(parts)}"]

    errors = []
    for spec, text in zip(_FIELDS, parts, strict=True):
        try:
            _parse_field(spec, text)
        except _FieldError as exc:
            errors.append(str(exc))
    if errors:
        return errors

    # Our checks passed; make sure croniter, which computes the fire times, agrees.
    normalized = " ".join(parts)
    if not croniter.is_valid(normalized):
        try:
            croniter(normalized)
        except (CroniterError, ValueError) as exc:
            return [f"invalid cron expression: {exc}"]
        return ["invalid cron expression"]
    try:
        croniter(normalized, datetime(2000, 1, 1), day_or=False).get_next(datetime)
    except CroniterBadDateError:
        return [
            "the expression never fires: no date matches its day-of-month, month and "
            "day-of-week together (e.g. 30 February)"
        ]
    return []


def validate_timezone(name: str) -> str | None:
    """None for a real IANA time zone name, else an error message."""
    if isinstance(name, str) and name in _iana_names():
        try:
            ZoneInfo(name)
            return None
        except (ValueError, OSError):
            pass
    return f"unknown time zone {name!r}"


def describe(expression: str) -> str:
    """A human-readable description, with 24-hour times, e.g. 'At 09:00, Monday through Friday'."""
    _require_valid(expression)
    options = Options()
    options.use_24hour_time_format = True
    options.locale_code = "en_US"  # not the server's locale: descriptions are always English
    return get_description(" ".join(expression.split()), options)


def crontab_fields(expression: str) -> dict[str, str]:
    """The expression as keyword arguments for Celery's crontab / django-celery-beat's
    CrontabSchedule (minute, hour, day_of_month, month_of_year, day_of_week).

    Celery refuses some standard spellings (day-of-week 7, `a/n`), so every restricted field
    is spelled out as a plain list of numbers; `*` stays `*`.
    """
    _require_valid(expression)
    fields = {}
    for spec, text in zip(_FIELDS, expression.split(), strict=True):
        values = _parse_field(spec, text)
        fields[spec.celery_name] = "*" if text == "*" else ",".join(map(str, sorted(values)))
    return fields


def to_instant(wall_clock: datetime, tz_name: str) -> datetime:
    """A naive local wall-clock time -> the aware UTC instant it fires at (the DST rule)."""
    return _instant(wall_clock, _zone(tz_name))


def next_fires(
    expression: str, tz_name: str, count: int = 5, after: datetime | None = None
) -> list[datetime]:
    """The next `count` fire instants strictly after `after` (aware; default now), as aware
    datetimes in the schedule's zone."""
    _require_valid(expression)
    zone = _zone(tz_name)
    after = datetime.now(UTC) if after is None else _require_aware(after, "after")
    if count < 1:
        return []

    # Start from `after` as wall-clock time, read with the smaller of its and the previous day's
    # UTC offsets: just after a spring-forward jump (03:10 CEST) the skipped 02:30 still lies
    # ahead (at 03:30 CEST), and starting from 03:10 would miss it.
    offset = min(after.astimezone(zone).utcoffset(), (after - _DAY).astimezone(zone).utcoffset())
    start = (after.astimezone(UTC) + offset).replace(tzinfo=None)
    wall_clocks = croniter(" ".join(expression.split()), start, day_or=False)
    fires: set[datetime] = set()  # a set: a skipped 02:30 lands on the same instant as 03:30
    while True:
        wall_clock = wall_clocks.get_next(datetime)
        instant = _instant(wall_clock, zone)
        if instant > after:  # not, e.g., a repeated hour's second pass: fired the first time
            fires.add(instant)
        # Stop once the earliest `count` fires are known. Wall-clock times that exist map to
        # ever later instants; a skipped one is moved forward, so times right after it may be
        # earlier instants (with a 30-minute gap, 02:15 -> 02:45 comes before 02:30).
        if _exists(wall_clock, zone) and sum(f <= instant for f in fires) >= count:
            break
    return [fire.astimezone(zone) for fire in sorted(fires)[:count]]


def current_slot(
    expression: str, tz_name: str, now: datetime, tolerance_seconds: int = 5
) -> datetime:
    """The slot a beat firing at `now` (aware) stands for, as a UTC instant.

    It is the latest wall-clock time matching the expression at or before `now` plus a small
    tolerance (beat and worker clocks drift, so a fire may arrive a moment early). Working in
    wall-clock time makes both occurrences of a repeated 02:30 the same slot, and a fire at
    03:00 or 03:30 on a spring-forward day the (skipped) 02:30 slot.
    """
    _require_valid(expression)
    zone = _zone(tz_name)
    now = _require_aware(now, "now")
    local = (now + timedelta(seconds=tolerance_seconds)).astimezone(zone).replace(tzinfo=None)
    # get_prev is strictly before its start: start at the next minute so this minute counts.
    start = local.replace(second=0, microsecond=0) + timedelta(minutes=1)
    wall_clock = croniter(" ".join(expression.split()), start, day_or=False).get_prev(datetime)
    return _instant(wall_clock, zone)


def _parse_field(spec: _Field, text: str) -> set[int]:
    """The values a field matches (day-of-week 7 folded into 0); raises _FieldError."""
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise _FieldError(f"{spec.name}: empty item in {text!r}")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not _is_digits(step_text):
                raise _FieldError(f"{spec.name}: step {step_text!r} is not a number")
            step = int(step_text)
            if step == 0:
                raise _FieldError(f"{spec.name}: step 0 must be positive")
        if base == "*":
            first, last = spec.low, spec.star_high
        elif "-" in base:
            start_text, _, end_text = base.partition("-")
            first, last = _value(spec, start_text, item), _value(spec, end_text, item)
            if first > last:
                raise _FieldError(f"{spec.name}: range {base} goes backwards")
        else:
            first = _value(spec, base, item)
            last = max(first, spec.star_high) if slash else first  # `a/n` runs to the end
        values.update(range(first, last + 1, step))
    return {0 if spec.name == "day-of-week" and v == 7 else v for v in values}


def _value(spec: _Field, token: str, item: str) -> int:
    if _is_digits(token):
        number = int(token)
        if not spec.low <= number <= spec.high:
            raise _FieldError(f"{spec.name}: {number} is out of range {spec.low}-{spec.high}")
        return number
    if token.upper() in spec.names:
        return spec.names[token.upper()]
    if not token:
        raise _FieldError(f"{spec.name}: {item!r} is missing a number")
    if _NON_STANDARD.fullmatch(token.upper()):
        raise _FieldError(
            f"{spec.name}: {token!r} is not supported (no L, W, #, ? or H): {_STANDARD_ONLY}"
        )
    raise _FieldError(f"{spec.name}: {token!r} is not a number{spec.names_hint}")


def _is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _require_valid(expression: str) -> None:
    errors = validate(expression)
    if errors:
        raise ValueError("; ".join(errors))


def _require_aware(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return moment


def _zone(tz_name: str) -> ZoneInfo:
    error = validate_timezone(tz_name)
    if error:
        raise ValueError(error)
    return ZoneInfo(tz_name)


@lru_cache(maxsize=1)
def _iana_names() -> frozenset[str]:
    # ZoneInfo alone would also accept file paths and, on some systems, other casings.
    return frozenset(available_timezones())


def _instant(wall_clock: datetime, zone: ZoneInfo) -> datetime:
    # fold=0 is the whole DST rule: a skipped time is read with the offset before the jump
    # (02:30 -> 03:30 local), a repeated time means its first occurrence.
    if wall_clock.tzinfo is not None:
        raise ValueError("wall_clock must be a naive local wall-clock time")
    return wall_clock.replace(tzinfo=zone, fold=0).astimezone(UTC)


def _exists(wall_clock: datetime, zone: ZoneInfo) -> bool:
    """False for a wall-clock time skipped by a spring-forward jump."""
    return _instant(wall_clock, zone).astimezone(zone).replace(tzinfo=None) == wall_clock
