"""scheduling.cron: validation, descriptions, fire times and the DST rule (no database)."""

from datetime import datetime

import pytest
from celery.schedules import crontab

from scheduling.cron import (
    crontab_fields,
    current_slot,
    describe,
    next_fires,
    to_instant,
    validate,
    validate_timezone,
)

DAILY_0230 = "30 2 * * *"


def at(text):
    """An aware datetime from ISO 8601 with an offset, e.g. '2026-03-08T07:30Z'."""
    moment = datetime.fromisoformat(text)
    assert moment.tzinfo is not None
    return moment


def iso(moments):
    return [moment.isoformat() for moment in moments]


# validate


@pytest.mark.parametrize(
    "expression",
    [
        "* * * * *",
        "0 9 * * 1-5",
        "*/15 9-17 * * MON-FRI",
        "5/10 * * * *",
        "0-30/10 0,12 1,15 jan-jun/2 sun,Sat",
        "0 0 1 JAN *",
        "0 0 * * 7",
        "0 0 * * 5-7",
        "  0   9 *\t* 1  ",
        "0 0 29 2 *",
    ],
)
def test_it_accepts_standard_expressions(expression):
    assert validate(expression) == []


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("60 * * * *", "minute: 60 is out of range 0-59"),
        ("61 * * * *", "minute: 61 is out of range 0-59"),
        ("* 24 * * *", "hour: 24 is out of range 0-23"),
        ("* * 0 * *", "day-of-month: 0 is out of range 1-31"),
        ("* * 32 * *", "day-of-month: 32 is out of range 1-31"),
        ("* * * 0 *", "month: 0 is out of range 1-12"),
        ("* * * 13 *", "month: 13 is out of range 1-12"),
        ("* * * * 8", "day-of-week: 8 is out of range 0-7"),
        ("0-60 * * * *", "minute: 60 is out of range 0-59"),
        ("* 1,2,25 * * *", "hour: 25 is out of range 0-23"),
    ],
)
def test_it_reports_values_out_of_each_fields_range(expression, error):
    assert validate(expression) == [error]


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("* x * * *", "hour: 'x' is not a number"),
        ("1.5 * * * *", "minute: '1.5' is not a number"),
        ("* * * * MON", None),
        ("* * * JANUARY *", "month: 'JANUARY' is not a number or month name (JAN-DEC)"),
        ("* * * * funday", "day-of-week: 'funday' is not a number or day name (SUN-SAT)"),
        ("* * MON * *", "day-of-month: 'MON' is not a number"),
        ("1,,2 * * * *", "minute: empty item in '1,,2'"),
        ("-5 * * * *", "minute: '-5' is missing a number"),
        ("1-2-3 * * * *", "minute: '2-3' is not a number"),
        ("*-5 * * * *", "minute: '*' is not a number"),
    ],
)
def test_it_reports_bad_tokens(expression, error):
    assert validate(expression) == ([error] if error else [])


@pytest.mark.parametrize("expression", ["0 0 1 JAN *", "0 0 1 jan *", "0 0 1 Jan-Mar *"])
def test_it_accepts_month_names_in_any_case(expression):
    assert validate(expression) == []


@pytest.mark.parametrize("expression", ["0 9 * * mon", "0 9 * * MON-fri", "0 9 * * sun,SAT"])
def test_it_accepts_weekday_names_in_any_case(expression):
    assert validate(expression) == []


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("*/0 * * * *", "minute: step 0 must be positive"),
        ("* * * */0 *", "month: step 0 must be positive"),
        ("* 1-5/0 * * *", "hour: step 0 must be positive"),
        ("*/x * * * *", "minute: step 'x' is not a number"),
        ("*/ * * * *", "minute: step '' is not a number"),
        ("*/2/3 * * * *", "minute: step '2/3' is not a number"),
    ],
)
def test_it_reports_bad_steps(expression, error):
    assert validate(expression) == [error]


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("* * * * 5-2", "day-of-week: range 5-2 goes backwards"),
        ("* * * * FRI-MON", "day-of-week: range FRI-MON goes backwards"),
        ("30-10 * * * *", "minute: range 30-10 goes backwards"),
        ("* 22-2 * * *", "hour: range 22-2 goes backwards"),
        ("* * * DEC-JAN *", "month: range DEC-JAN goes backwards"),
    ],
)
def test_it_reports_backwards_ranges(expression, error):
    assert validate(expression) == [error]


@pytest.mark.parametrize(
    ("expression", "count"),
    [("* * * * * *", 6), ("0 0 * * * 2026", 6), ("* * * *", 4), ("", 0), ("   ", 0)],
)
def test_it_requires_exactly_five_fields(expression, count):
    assert validate(expression) == [
        f"expected 5 fields (minute hour day-of-month month day-of-week), got {count}"
    ]


@pytest.mark.parametrize("macro", ["@daily", "@hourly", "@reboot", "@yearly"])
def test_it_rejects_macros(macro):
    [error] = validate(macro)
    assert error.startswith(f"'{macro}' is not supported: use 5-field standard cron only")


@pytest.mark.parametrize(
    ("expression", "field", "token"),
    [
        ("0 0 L * *", "day-of-month", "L"),
        ("0 0 15W * *", "day-of-month", "15W"),
        ("0 0 LW * *", "day-of-month", "LW"),
        ("0 0 ? * *", "day-of-month", "?"),
        ("0 0 * * 5#2", "day-of-week", "5#2"),
        ("0 0 * * 5L", "day-of-week", "5L"),
        ("H * * * *", "minute", "H"),
    ],
)
def test_it_rejects_non_standard_syntax(expression, field, token):
    assert validate(expression) == [
        f"{field}: '{token}' is not supported (no L, W, #, ? or H): use 5-field standard cron only"
    ]


def test_it_reports_every_bad_field():
    assert validate("61 x * 13 *") == [
        "minute: 61 is out of range 0-59",
        "hour: 'x' is not a number",
        "month: 13 is out of range 1-12",
    ]


@pytest.mark.parametrize("expression", ["0 0 30 2 *", "0 0 31 4 *", "0 0 30 2 1"])
def test_it_rejects_expressions_that_never_fire(expression):
    [error] = validate(expression)
    assert error.startswith("the expression never fires")


@pytest.mark.parametrize("expression", [None, 5, ["0", "9", "*", "*", "*"]])
def test_it_rejects_non_strings(expression):
    assert validate(expression) == ["the cron expression must be a string"]


# validate_timezone


@pytest.mark.parametrize(
    "name", ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
)
def test_it_accepts_iana_time_zones(name):
    assert validate_timezone(name) is None


@pytest.mark.parametrize(
    "name",
    ["Mars/Olympus", "", " ", "../x", "/etc/localtime", "europe/berlin", "America", "CEST", None],
)
def test_it_rejects_unknown_time_zones(name):
    assert validate_timezone(name) == f"unknown time zone {name!r}"


def test_it_names_the_unknown_time_zone():
    assert validate_timezone("Mars/Olympus") == "unknown time zone 'Mars/Olympus'"


# describe


@pytest.mark.parametrize(
    ("expression", "description"),
    [
        ("0 9 * * 1-5", "At 09:00, Monday through Friday"),
        ("30 2 * * *", "At 02:30"),
        ("0 18 * * 7", "At 18:00, only on Sunday"),
        ("* * * * *", "Every minute"),
        ("*/15 * * * *", "Every 15 minutes"),
        ("0 0 1 jan *", "At 00:00, on day 1 of the month, only in January"),
        ("0   9 * *   MON-FRI", "At 09:00, Monday through Friday"),
    ],
)
def test_it_describes_expressions_in_24_hour_time(expression, description):
    assert describe(expression) == description


def test_it_refuses_to_describe_an_invalid_expression():
    with pytest.raises(ValueError, match="minute: 61 is out of range 0-59"):
        describe("61 * * * *")


# crontab_fields (for the django-celery-beat CrontabSchedule)


@pytest.mark.parametrize(
    ("expression", "fields"),
    [
        (
            "0 9 * * 1-5",
            dict(
                minute="0", hour="9", day_of_month="*", month_of_year="*", day_of_week="1,2,3,4,5"
            ),
        ),
        (
            "5/20 */6 1-31/10 jan-dec/5 5-7",
            dict(
                minute="5,25,45",
                hour="0,6,12,18",
                day_of_month="1,11,21,31",
                month_of_year="1,6,11",
                day_of_week="0,5,6",
            ),
        ),
        (
            "0 0 * * 7",
            dict(minute="0", hour="0", day_of_month="*", month_of_year="*", day_of_week="0"),
        ),
    ],
)
def test_it_spells_out_fields_celery_accepts(expression, fields):
    assert crontab_fields(expression) == fields
    crontab(**fields)  # Celery refuses day-of-week 7 and `a/n` written as is


# next_fires


def test_it_lists_the_next_fires_in_the_schedules_zone():
    fires = next_fires("0 9 * * 1-5", "Europe/Berlin", after=at("2026-01-08T12:00Z"))
    assert iso(fires) == [
        "2026-01-09T09:00:00+01:00",
        "2026-01-12T09:00:00+01:00",
        "2026-01-13T09:00:00+01:00",
        "2026-01-14T09:00:00+01:00",
        "2026-01-15T09:00:00+01:00",
    ]
    assert all(fire.tzinfo.key == "Europe/Berlin" for fire in fires)


def test_it_lists_fires_strictly_after_after():
    fires = next_fires("0 9 * * *", "America/New_York", count=2, after=at("2026-06-01T09:00-04:00"))
    assert iso(fires) == ["2026-06-02T09:00:00-04:00", "2026-06-03T09:00:00-04:00"]


def test_it_lists_as_many_fires_as_asked():
    after = at("2026-01-01T00:00Z")
    assert len(next_fires("* * * * *", "UTC", count=12, after=after)) == 12
    assert next_fires("* * * * *", "UTC", count=0, after=after) == []


def test_it_requires_both_day_of_month_and_day_of_week_when_both_are_given():
    # As Celery beat evaluates it: Friday the 13th, not every 13th and every Friday.
    fires = next_fires("0 0 13 * 5", "UTC", count=3, after=at("2026-01-01T00:00Z"))
    assert iso(fires) == [
        "2026-02-13T00:00:00+00:00",
        "2026-03-13T00:00:00+00:00",
        "2026-11-13T00:00:00+00:00",
    ]


def test_it_refuses_naive_datetimes_and_unknown_zones():
    with pytest.raises(ValueError, match="after must be timezone-aware"):
        next_fires("* * * * *", "UTC", after=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        current_slot("* * * * *", "UTC", datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        next_fires("* * * * *", "Mars/Olympus")
    with pytest.raises(ValueError, match="wall_clock must be a naive"):
        to_instant(at("2026-01-01T00:00Z"), "UTC")


# The DST rule


@pytest.mark.parametrize(
    ("wall_clock", "zone", "instant"),
    [
        # New York springs forward 2026-03-08 02:00 EST -> 03:00 EDT: 02:30 is 03:30 EDT.
        (datetime(2026, 3, 8, 2, 30), "America/New_York", "2026-03-08T07:30:00+00:00"),
        # New York falls back 2026-11-01 02:00 EDT -> 01:00 EST: 01:30 twice, first is EDT;
        # 02:30 happens once (EST).
        (datetime(2026, 11, 1, 1, 30), "America/New_York", "2026-11-01T05:30:00+00:00"),
        (datetime(2026, 11, 1, 2, 30), "America/New_York", "2026-11-01T07:30:00+00:00"),
        # Berlin springs forward 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 is 03:30 CEST.
        (datetime(2026, 3, 29, 2, 30), "Europe/Berlin", "2026-03-29T01:30:00+00:00"),
        # Berlin falls back 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 twice, first is CEST.
        (datetime(2026, 10, 25, 2, 30), "Europe/Berlin", "2026-10-25T00:30:00+00:00"),
        (datetime(2026, 7, 1, 2, 30), "Europe/Berlin", "2026-07-01T00:30:00+00:00"),
    ],
)
def test_it_turns_wall_clock_times_into_instants_by_the_dst_rule(wall_clock, zone, instant):
    assert to_instant(wall_clock, zone).isoformat() == instant


@pytest.mark.parametrize(
    ("zone", "after", "fires"),
    [
        (
            "America/New_York",  # spring forward: 02:30 does not exist, fires at 03:30 EDT
            "2026-03-06T12:00Z",
            [
                "2026-03-07T02:30:00-05:00",  # 07:30 UTC
                "2026-03-08T03:30:00-04:00",  # 07:30 UTC, once
                "2026-03-09T02:30:00-04:00",  # 06:30 UTC
                "2026-03-10T02:30:00-04:00",
            ],
        ),
        (
            "America/New_York",  # fall back: 02:30 EST happens once
            "2026-10-30T12:00Z",
            [
                "2026-10-31T02:30:00-04:00",  # 06:30 UTC
                "2026-11-01T02:30:00-05:00",  # 07:30 UTC
                "2026-11-02T02:30:00-05:00",
                "2026-11-03T02:30:00-05:00",
            ],
        ),
        (
            "Europe/Berlin",  # spring forward: 02:30 does not exist, fires at 03:30 CEST
            "2026-03-27T12:00Z",
            [
                "2026-03-28T02:30:00+01:00",  # 01:30 UTC
                "2026-03-29T03:30:00+02:00",  # 01:30 UTC, once
                "2026-03-30T02:30:00+02:00",  # 00:30 UTC
                "2026-03-31T02:30:00+02:00",
            ],
        ),
        (
            "Europe/Berlin",  # fall back: 02:30 happens twice, fires at the first (CEST)
            "2026-10-23T12:00Z",
            [
                "2026-10-24T02:30:00+02:00",  # 00:30 UTC
                "2026-10-25T02:30:00+02:00",  # 00:30 UTC, not again at 02:30 CET
                "2026-10-26T02:30:00+01:00",  # 01:30 UTC
                "2026-10-27T02:30:00+01:00",
            ],
        ),
    ],
)
def test_it_fires_a_daily_time_once_per_day_across_transitions(zone, after, fires):
    listed = next_fires(DAILY_0230, zone, count=4, after=at(after))
    assert iso(listed) == fires
    assert len({fire.date() for fire in listed}) == 4


def test_it_still_lists_a_skipped_time_when_listing_from_just_after_the_jump():
    # At 03:10 CEST, Berlin's jump is over but the skipped 02:30 (= 03:30 CEST) is still ahead.
    fires = next_fires(DAILY_0230, "Europe/Berlin", count=2, after=at("2026-03-29T03:10+02:00"))
    assert iso(fires) == ["2026-03-29T03:30:00+02:00", "2026-03-30T02:30:00+02:00"]
    later = next_fires(DAILY_0230, "Europe/Berlin", count=1, after=at("2026-03-29T03:30+02:00"))
    assert iso(later) == ["2026-03-30T02:30:00+02:00"]


def test_it_does_not_fire_again_in_the_repeated_hour():
    # Listing from 02:45 CET (second pass of Berlin's repeated hour): 02:30 already fired
    # at 02:30 CEST, so the next fire is the next day.
    fires = next_fires(DAILY_0230, "Europe/Berlin", count=1, after=at("2026-10-25T02:45+01:00"))
    assert iso(fires) == ["2026-10-26T02:30:00+01:00"]


def test_it_fires_each_half_hour_once_around_berlins_transitions():
    spring = next_fires("*/30 1-3 * * *", "Europe/Berlin", 4, after=at("2026-03-29T00:00Z"))
    assert iso(spring) == [
        "2026-03-29T01:30:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 02:00 and 03:00 are the same instant: once
        "2026-03-29T03:30:00+02:00",  # 02:30 and 03:30 likewise
        "2026-03-30T01:00:00+02:00",
    ]
    autumn = next_fires("*/30 1-3 * * *", "Europe/Berlin", 6, after=at("2026-10-24T22:45Z"))
    assert iso(autumn) == [
        "2026-10-25T01:00:00+02:00",
        "2026-10-25T01:30:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:30:00+02:00",  # not again at 02:00 and 02:30 CET
        "2026-10-25T03:00:00+01:00",
        "2026-10-25T03:30:00+01:00",
    ]


def test_it_keeps_fires_in_order_across_a_half_hour_gap():
    # Lord Howe springs forward 2026-10-04 02:00 -> 02:30: 02:00 and 02:15 move to 02:30 and
    # 02:45, which the real 02:30 and 02:45 then repeat.
    fires = next_fires("*/15 2 * * *", "Australia/Lord_Howe", 3, after=at("2026-10-03T15:20Z"))
    assert iso(fires) == [
        "2026-10-04T02:30:00+11:00",
        "2026-10-04T02:45:00+11:00",
        "2026-10-05T02:00:00+11:00",
    ]


# current_slot


@pytest.mark.parametrize("firing", ["2026-10-25T02:30:00+02:00", "2026-10-25T02:30:00+01:00"])
def test_it_gives_both_occurrences_of_a_repeated_time_the_same_slot(firing):
    slot = current_slot(DAILY_0230, "Europe/Berlin", at(firing))
    assert slot.isoformat() == "2026-10-25T00:30:00+00:00"  # 02:30 CEST, the first


@pytest.mark.parametrize(
    "firing",
    ["2026-03-29T03:00:00+02:00", "2026-03-29T03:30:00+02:00", "2026-03-29T03:30:02+02:00"],
)
def test_it_gives_fires_after_a_spring_forward_gap_the_skipped_slot(firing):
    slot = current_slot(DAILY_0230, "Europe/Berlin", at(firing))
    assert slot.isoformat() == "2026-03-29T01:30:00+00:00"  # 03:30 CEST
    assert slot == next_fires(DAILY_0230, "Europe/Berlin", 1, after=at("2026-03-29T00:00Z"))[0]


def test_it_gives_new_yorks_spring_forward_fire_the_skipped_slot():
    slot = current_slot(DAILY_0230, "America/New_York", at("2026-03-08T03:30-04:00"))
    assert slot.isoformat() == "2026-03-08T07:30:00+00:00"


@pytest.mark.parametrize(
    ("firing", "slot"),
    [
        ("2026-05-04T12:00:00Z", "2026-05-04T12:00:00+00:00"),
        ("2026-05-04T12:00:03Z", "2026-05-04T12:00:00+00:00"),
        ("2026-05-04T11:59:58Z", "2026-05-04T12:00:00+00:00"),  # early, within tolerance
        ("2026-05-04T11:59:50Z", "2026-05-04T11:59:00+00:00"),  # too early: the minute before
        ("2026-05-04T12:00:40Z", "2026-05-04T12:00:00+00:00"),  # late
        ("2026-05-04T12:00:56Z", "2026-05-04T12:01:00+00:00"),  # within tolerance of 12:01
    ],
)
def test_it_finds_the_current_minute_slot(firing, slot):
    assert current_slot("* * * * *", "UTC", at(firing)).isoformat() == slot


def test_it_finds_the_current_slot_in_the_schedules_zone():
    slot = current_slot("0 9 * * 1-5", "Europe/Berlin", at("2026-01-09T08:00:01Z"))
    assert slot.isoformat() == "2026-01-09T08:00:00+00:00"  # 09:00 CET
    late = current_slot("0 9 * * 1-5", "Europe/Berlin", at("2026-01-10T10:00Z"))  # Saturday
    assert late.isoformat() == "2026-01-09T08:00:00+00:00"
