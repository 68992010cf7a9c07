import os

from django.core.wsgi import get_wsgi_application

from config.tracing import tracing_setup

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

tracing_setup(service="relay-web", web=True)  # before the handler loads the middleware
application = get_wsgi_application()
