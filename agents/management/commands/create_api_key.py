from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from agents.models import ApiKey


class Command(BaseCommand):
    help = "Make an API key for a user and print it: it is shown this once, never again."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="what the key is for (shown in lists)")

    def handle(self, username, name, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}.")
        key, secret = ApiKey.issue(owner=user, name=name[:100])
        self.stderr.write(f"API key {key.prefix} for {username} (keep it: it is not kept here):")
        self.stdout.write(secret)
