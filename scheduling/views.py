from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from . import cron


@login_required
def schedule_list(request):
    schedules = request.user.schedules.select_related("workflow", "agent")
    rows = []
    for schedule in schedules:
        upcoming = cron.next_fires(schedule.cron, schedule.timezone, count=1)
        rows.append(
            {
                "schedule": schedule,
                "description": cron.describe(schedule.cron),
                "next": upcoming[0] if schedule.enabled and upcoming else None,
                "fires": schedule.fires.select_related("run")[:5],
            }
        )
    return render(request, "schedules/list.html", {"rows": rows})
