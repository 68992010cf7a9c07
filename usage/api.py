"""GET /api/usage/: the requesting user's runs and tokens per UTC day and agent, and their
daily token budget."""

import datetime as dt

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers
from rest_framework.decorators import api_view
from rest_framework.response import Response

from .services import today, usage_report

MAX_DAYS = 366
DEFAULT_DAYS = 30


class UsageQuerySerializer(serializers.Serializer):
    # `from` is a keyword: the fields are made by get_fields()
    def get_fields(self):
        return {
            "from": serializers.DateField(
                required=False,
                help_text=f"the first UTC day (YYYY-MM-DD), inclusive; default: {DEFAULT_DAYS}"
                " days up to `to`",
            ),
            "to": serializers.DateField(
                required=False, help_text="the last UTC day (YYYY-MM-DD), inclusive; default: today"
            ),
        }

    def validate(self, data):
        last = data.get("to") or today()
        first = data.get("from")
        if first is None:
            try:
                first = last - dt.timedelta(days=DEFAULT_DAYS - 1)
            except OverflowError:
                first = dt.date.min
        if first > last:
            raise serializers.ValidationError(
                {"from": ["Must be on or before `to` (today unless given)."]}
            )
        if (last - first).days + 1 > MAX_DAYS:
            raise serializers.ValidationError(
                {"from": [f"The range may span at most {MAX_DAYS} days."]}
            )
        return {"from": first, "to": last}


class CountsSerializer(serializers.Serializer):
    runs = serializers.IntegerField(help_text="runs started")
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()


# the fields of a base serializer come first, in the order of the bases
class AgentFields(serializers.Serializer):
    agent = serializers.IntegerField(
        allow_null=True, help_text="the agent's id; null: runs of no agent"
    )
    name = serializers.CharField(help_text="its name (as last used, if it was deleted)")


class AgentUsageSerializer(AgentFields, CountsSerializer):
    pass


class UsageTotalsSerializer(CountsSerializer):
    agents = AgentUsageSerializer(many=True)


class DayField(serializers.Serializer):
    day = serializers.DateField()


class DayUsageSerializer(DayField, UsageTotalsSerializer):
    pass


class UsageBudgetSerializer(serializers.Serializer):
    daily_tokens = serializers.IntegerField(
        allow_null=True, help_text="input + output tokens your runs may use per UTC day; null: no"
        " budget"
    )  # fmt: skip
    used_today = serializers.IntegerField()
    remaining = serializers.IntegerField(allow_null=True)
    resets = serializers.DateTimeField(help_text="the next UTC midnight")


class UsageSerializer(serializers.Serializer):
    def get_fields(self):
        return {
            "from": serializers.DateField(),
            "to": serializers.DateField(),
            "days": DayUsageSerializer(many=True, help_text="every day of the range, in order"),
            "totals": UsageTotalsSerializer(),
            "budget": UsageBudgetSerializer(),
        }


AGENT_EXAMPLE = {
    "agent": 1, "name": "Assistant", "runs": 2, "input_tokens": 120, "output_tokens": 80,
}  # fmt: skip
EXAMPLE = {
    "from": "2026-12-01",
    "to": "2026-12-01",
    "days": [
        {"day": "2026-12-01", "runs": 2, "input_tokens": 120, "output_tokens": 80,
         "agents": [AGENT_EXAMPLE]},
    ],
    "totals": {"runs": 2, "input_tokens": 120, "output_tokens": 80, "agents": [AGENT_EXAMPLE]},
    "budget": {"daily_tokens": 100000, "used_today": 200, "remaining": 99800,
               "resets": "2026-12-02T00:00:00Z"},
}  # fmt: skip


@extend_schema(
    operation_id="usage_retrieve",
    tags=["usage"],
    parameters=[UsageQuerySerializer],
    responses=UsageSerializer,
    description="Your runs (those started that day) and tokens (input and output, as each"
    " attempt of a run saved them) per UTC day from `from` to `to`, inclusive, at most"
    f" {MAX_DAYS} days; each day per agent; with the totals and your daily token budget.",
    examples=[
        OpenApiExample("A day", EXAMPLE, response_only=True),
    ],
)
@api_view(["GET"])
def usage(request):
    query = UsageQuerySerializer(data=request.query_params)
    query.is_valid(raise_exception=True)
    report = usage_report(
        user=request.user, first=query.validated_data["from"], last=query.validated_data["to"]
    )
    return Response(UsageSerializer(report).data)
