from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from agents import views
from agents.auth import LoginForm
from scheduling import views as schedule_views
from workflows import views as workflow_views

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="chats"), name="home"),
    path("chats/", views.chat_list, name="chats"),
    path("chats/new/", views.chat_create, name="chat-create"),
    path("chats/<int:pk>/", views.chat_detail, name="chat"),
    path("chats/<int:pk>/messages/", views.chat_messages, name="chat-messages"),
    path("chats/<int:pk>/rename/", views.chat_rename, name="chat-rename"),
    path("chats/<int:pk>/delete/", views.chat_delete, name="chat-delete"),
    path("workflows/", workflow_views.workflow_list, name="workflows"),
    path("workflows/<int:pk>/", workflow_views.workflow_detail, name="workflow"),
    path("workflows/runs/<uuid:run_id>/", workflow_views.workflow_run, name="workflow-run"),
    path("schedules/", schedule_views.schedule_list, name="schedules"),
    path("login/", auth_views.LoginView.as_view(authentication_form=LoginForm), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/", include("agents.urls")),
    path("admin/", admin.site.urls),
    # browsers ask for it whatever the page links, and the admin's pages link none
    path("favicon.ico", RedirectView.as_view(url=static("relay/icon.svg"))),
]
