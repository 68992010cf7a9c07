"""Budgets on the user's admin page (an inline), and the usage ledger, read-only."""

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from .models import Budget, DailyUsage


class BudgetInline(admin.StackedInline):
    model = Budget
    can_delete = True
    verbose_name = "daily token budget"
    verbose_name_plural = "daily token budget"


User = get_user_model()
# Whatever admin the user model has (Django's UserAdmin, or another app's), with the budget
# added: django.contrib.auth is installed before this app, so its admin is registered by now.
Registered = type(admin.site.get_model_admin(User)) if admin.site.is_registered(User) else UserAdmin


class UserWithBudgetAdmin(Registered):
    inlines = [*Registered.inlines, BudgetInline]


if admin.site.is_registered(User):
    admin.site.unregister(User)
admin.site.register(User, UserWithBudgetAdmin)


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ["user", "daily_tokens"]
    search_fields = ["user__username"]
    raw_id_fields = ["user"]


@admin.register(DailyUsage)
class DailyUsageAdmin(admin.ModelAdmin):
    """What runs used: kept by the runs themselves, never edited by hand."""

    list_display = ["day", "owner", "agent_name", "runs", "input_tokens", "output_tokens"]
    list_filter = ["day"]
    search_fields = ["owner__username", "agent_name"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
