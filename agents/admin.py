from django import forms
from django.contrib import admin, messages
from django.db import models
from rest_framework.exceptions import ValidationError

from runs.admin import ReadOnlyInline, RunAdmin, ThreadAdmin
from runs.forms import OVERRIDES

from . import toolbox
from .auth import AdminLoginForm
from .connections import HeadersField, parse_headers
from .models import Agent, ApiKey, McpServer, Provider, RunAgent, ThreadAgent

admin.site.login_form = AdminLoginForm  # throttled as the page login is


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    formfield_overrides = {models.JSONField: OVERRIDES}
    list_display = ["name", "owner", "provider", "model", "updated"]
    list_filter = ["model"]
    search_fields = ["name", "owner__username"]
    raw_id_fields = ["provider"]
    filter_horizontal = ["mcp_servers"]


class SecretsForm(forms.ModelForm):
    """Secrets are typed in, never shown: an empty box keeps what is kept."""

    new_headers = forms.CharField(
        label="Headers", required=False, widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One `Name: value` a line, replacing those kept (their values are never"
        " shown). Empty: keep them.",
    )  # fmt: skip
    clear_headers = forms.BooleanField(required=False, help_text="Remove every header.")

    def clean_new_headers(self):
        text = self.cleaned_data["new_headers"].strip()
        if not text:
            return None
        try:
            return HeadersField().run_validation(parse_headers(text))
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None
        except ValidationError as exc:  # the API's own rules, in the form's words
            raise forms.ValidationError(exc.detail) from None

    def save(self, commit=True):
        if self.cleaned_data.get("clear_headers"):
            self.instance.headers = {}
        elif self.cleaned_data.get("new_headers") is not None:
            self.instance.headers = self.cleaned_data["new_headers"]
        return super().save(commit)


class ProviderForm(SecretsForm):
    new_api_key = forms.CharField(
        label="API key", required=False, strip=True,
        widget=forms.PasswordInput(render_value=False),
        help_text="Kept encrypted and never shown. Empty: keep the one kept.",
    )  # fmt: skip
    clear_api_key = forms.BooleanField(required=False, help_text="Remove the API key.")

    class Meta:
        model = Provider
        fields = ["owner", "name", "kind", "base_url", "default_model"]

    def save(self, commit=True):
        if self.cleaned_data.get("clear_api_key"):
            self.instance.api_key = ""
        elif self.cleaned_data.get("new_api_key"):
            self.instance.api_key = self.cleaned_data["new_api_key"]
        return super().save(commit)


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    list_display = ["name", "owner", "kind", "base_url", "default_model", "has_api_key"]
    list_filter = ["kind"]
    search_fields = ["name", "owner__username", "base_url"]
    raw_id_fields = ["owner"]

    @admin.display(boolean=True, description="API key")
    def has_api_key(self, provider):
        return bool(provider.api_key_sealed)


class McpServerForm(SecretsForm):
    class Meta:
        model = McpServer
        fields = ["owner", "name", "transport", "url", "command", "enabled", "allowed_tools"]

    def clean(self):
        data = super().clean()
        transport = data.get("transport")
        if transport == McpServer.Transport.STDIO:
            command = data.get("command")
            if not (isinstance(command, list) and command
                    and all(isinstance(part, str) and part for part in command)):  # fmt: skip
                self.add_error("command", 'A stdio server needs its command: ["program", "arg"].')
        elif not data.get("url"):
            self.add_error("url", "A streamable HTTP server needs its URL.")
        return data


@admin.register(McpServer)
class McpServerAdmin(admin.ModelAdmin):
    """Here an administrator may add stdio servers (a command the workers run), which the API
    refuses to users."""

    form = McpServerForm
    formfield_overrides = {models.JSONField: OVERRIDES}
    list_display = ["name", "owner", "transport", "url", "enabled", "tool_count", "tools_error"]
    list_filter = ["transport", "enabled"]
    search_fields = ["name", "owner__username", "url"]
    raw_id_fields = ["owner"]
    readonly_fields = ["tool_names", "tools_refreshed", "tools_error"]
    actions = ["refresh"]

    def save_model(self, request, server, form, change):
        super().save_model(request, server, form, change)
        moved = {"transport", "url", "command", "new_headers", "clear_headers"}
        if change and moved & set(form.changed_data):
            toolbox.forget_tools(server)  # listed from somewhere else: list again

    @admin.display(description="tools")
    def tool_count(self, server):
        return len(server.tools)

    @admin.display(description="tools the model sees")
    def tool_names(self, server):
        return ", ".join(tool["name"] for tool in server.tools) or "—"

    @admin.action(description="List the selected servers' tools again")
    def refresh(self, request, queryset):
        for server in queryset:
            error = toolbox.refresh_tools(server)
            if error:
                self.message_user(request, f"{server}: {error}", messages.ERROR)
            else:
                self.message_user(request, f"{server}: {len(server.tools)} tools")


class ThreadAgentInline(admin.StackedInline):
    """The agent a thread talks to, on the thread's admin page."""

    model = ThreadAgent
    can_delete = False
    raw_id_fields = ["agent"]


class RunAgentInline(ReadOnlyInline):
    """The agent a run used, on the run's admin page."""

    model = RunAgent
    fields = ["agent"]


ThreadAdmin.inlines = [ThreadAgentInline, *ThreadAdmin.inlines]
RunAdmin.inlines = [RunAgentInline, *RunAdmin.inlines]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are listed and revoked here, never shown: only their digest is kept, and it stays
    off these pages too. They are made with the API or `manage.py create_api_key`."""

    list_display = ["__str__", "owner", "prefix", "created", "last_used"]
    search_fields = ["name", "prefix", "owner__username"]
    fields = ["owner", "name", "prefix", "created", "last_used"]
    readonly_fields = ["owner", "prefix", "created", "last_used"]

    def has_add_permission(self, request):
        return False
