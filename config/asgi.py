import os
import re

import django
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler

from config.tracing import tracing_setup

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

EVENT_STREAM = re.compile(r"/api/(?:runs|threads)/[^/]+/events/")
CHUNK = 64 * 1024  # what a thread reads at a time from a synchronous response


class Handler(ASGIHandler):
    """Django's handler, except that an event stream keeps no thread of its own, and that a
    synchronous streaming response is read in chunks.

    Django runs each request in a ThreadSensitiveContext, whose one-thread executor lives as
    long as the response: a thread per open stream. A stream's few thread-sensitive calls (the
    request signals, the session and auth middleware) share asgiref's single thread instead;
    its own database and log reads run in the default executor (runs/events.py).

    WhiteNoise serves static files as FileResponse, a synchronous iterator: Django's handler
    would read the whole file into a list in a thread (and warn "StreamingHttpResponse must
    consume synchronous iterators"). Here a thread of the default executor reads it CHUNK at a
    time. The project's only synchronous streaming responses are files, which touch neither
    the database nor the request, so any thread will do.
    """

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and EVENT_STREAM.fullmatch(scope["path"]):
            await self.handle(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def send_response(self, response, send):
        if response.streaming and not response.is_async:
            response.streaming_content = _chunks(iter(response.streaming_content))
        await super().send_response(response, send)


async def _chunks(parts):
    def read():
        chunk, size = [], 0
        for part in parts:
            chunk.append(part)
            size += len(part)
            if size >= CHUNK:
                break
        return chunk

    read = sync_to_async(read, thread_sensitive=False)
    while chunk := await read():
        for part in chunk:
            yield part


django.setup(set_prefix=False)
tracing_setup(service="relay-web", web=True)  # before the handler loads the middleware
application = Handler()
