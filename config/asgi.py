import os
import re

import django
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

EVENT_STREAM = re.compile(r"/api/runs/[^/]+/events/")


class Handler(ASGIHandler):
    """Django's handler, except that an event stream keeps no thread of its own.

    Django runs each request in a ThreadSensitiveContext, whose one-thread executor lives as
    long as the response: a thread per open stream. A stream's few thread-sensitive calls (the
    request signals, the session and auth middleware) share asgiref's single thread instead;
    its own database and log reads run in the default executor (agents/events.py).
    """

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and EVENT_STREAM.fullmatch(scope["path"]):
            await self.handle(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


django.setup(set_prefix=False)
application = Handler()
