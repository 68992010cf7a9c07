import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from agents.models import ApiKey

KEY_NAME = "setup_demo"


class Command(BaseCommand):
    help = (
        "Create the demo user (a superuser with a demo agent) and print how to use it. With"
        " DEBUG off its password is a random one, printed once, never demo."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", help="default: demo, or a random one when DEBUG is off")

    def handle(self, username, password, **options):
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if not settings.DEBUG:
            if password is not None:
                # as createsuperuser would: the validators apply in production
                try:
                    validate_password(password, User(username=username))
                except ValidationError as exc:
                    raise CommandError(" ".join(exc.messages)) from None
            elif user is None or user.check_password("demo"):
                # a new user, or one made by a development setup: that password is public
                password = secrets.token_urlsafe(18)
        elif password is None and (user is None or user.check_password("demo")):
            password = "demo"
        if user is None:
            user = User.objects.create_superuser(username, password=password)
        elif password is not None and not user.check_password(password):
            user.set_password(password)
            user.save(update_fields=["password"])
        # Only a digest of a key is kept, so it can be printed only when made: each run makes a
        # new one and revokes the one it printed before.
        user.api_keys.filter(name=KEY_NAME).delete()
        _, key = ApiKey.issue(owner=user, name=KEY_NAME)
        port = 8000
        login = (
            f"as {username} / {password}"
            if password
            else f"as {username} (password unchanged; `manage.py changepassword {username}`)"
        )
        self.stdout.write(
            f"""
Relay is ready.
  Log in:   http://127.0.0.1:{port}/  {login}
  Admin:    http://127.0.0.1:{port}/admin/
  API key:  {key}
            (shown once; the key printed by the previous setup_demo no longer works)

Try a run from a shell (the README's "First run" shows the whole exchange):
  curl -H 'Authorization: Bearer {key}' http://127.0.0.1:{port}/api/threads/
"""
        )
