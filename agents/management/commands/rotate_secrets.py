"""Encrypt every stored secret again with the first key (agents/secrets.py), after a new key
was put in front of SECRETS_ENCRYPTION_KEYS or SECRET_KEY moved to SECRET_KEY_FALLBACKS."""

from django.core.management.base import BaseCommand
from django.db import transaction

from agents import secrets
from agents.models import McpServer, Provider

SEALED = {Provider: ["api_key_sealed", "headers_sealed"], McpServer: ["headers_sealed"]}


class Command(BaseCommand):
    help = "Encrypt the stored API keys and headers again with the first encryption key."

    def handle(self, **options):
        for model, columns in SEALED.items():
            count = 0
            with transaction.atomic():
                for row in model.objects.select_for_update().only("pk", *columns):
                    for column in columns:
                        setattr(row, column, secrets.rotate(getattr(row, column)))
                    row.save(update_fields=columns)
                    count += 1
            self.stdout.write(f"{model._meta.verbose_name_plural}: {count} encrypted again")
