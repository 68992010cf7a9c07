from django.apps import AppConfig


class UsageConfig(AppConfig):
    name = "usage"

    def ready(self):
        from runs import signals

        from . import services

        signals.run_starting.connect(services.budget_check_start, dispatch_uid="usage.start")
        signals.run_started.connect(services.usage_count_run, dispatch_uid="usage.run")
        signals.run_usage.connect(services.usage_add_tokens, dispatch_uid="usage.tokens")
        signals.run_turn_ended.connect(services.budget_check_turn, dispatch_uid="usage.turn")
