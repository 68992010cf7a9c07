from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create the demo user (a superuser with a demo agent) and print how to use it."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", default="demo")

    def handle(self, username, password, **options):
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            user = User.objects.create_superuser(username, password=password)
        token, _ = Token.objects.get_or_create(user=user)
        port = 8000
        self.stdout.write(
            f"""
Relay is ready.
  Log in:   http://127.0.0.1:{port}/admin/  as {username} / {password}
  Home:     http://127.0.0.1:{port}/
  API key:  {token.key}

Try a run from a shell (the README's "First run" shows the whole exchange):
  curl -H 'Authorization: Bearer {token.key}' http://127.0.0.1:{port}/api/threads/
"""
        )
