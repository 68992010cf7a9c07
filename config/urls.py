"""Every app's pages at the root and its API under /api/, each from the app's own urls.py;
the project-wide parts (login, the API's schema and docs, its JSON 404, the admin) here."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

import agents.urls
import ops.urls
import runs.urls
import scheduling.urls
import usage.urls
import webhooks.urls
import workflows.urls
from agents.auth import LoginForm
from runs import http

APPS = [
    runs.urls,
    agents.urls,
    workflows.urls,
    scheduling.urls,
    usage.urls,
    webhooks.urls,
    ops.urls,
]

api = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    *(pattern for app in APPS for pattern in app.api_urlpatterns),
    re_path(r"^(?P<path>.*/)$", http.not_found),  # last; unslashed URLs still redirect first
]

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="chats"), name="home"),
    *(pattern for app in APPS for pattern in app.urlpatterns),
    path("login/", auth_views.LoginView.as_view(authentication_form=LoginForm), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/", include(api)),
    path("admin/", admin.site.urls),
    # browsers ask for it whatever the page links, and the admin's pages link none
    path("favicon.ico", RedirectView.as_view(url=static("relay/icon.svg"))),
]
