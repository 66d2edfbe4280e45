from django.contrib.auth import views as auth_views
from django.urls import path

from . import views

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(template_name="registration/login.html",
                                                redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", views.home, name="home"),
    path("jobs/", views.job_list, name="jobs"),
    path("jobs/new/", views.job_submit, name="job-submit"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job-detail"),
    path("jobs/<uuid:job_id>/cancel/", views.job_cancel, name="job-cancel"),
    path("jobs/<uuid:job_id>/calls/<int:call_pk>/approve/", views.call_approve, name="call-approve"),
    path("jobs/<uuid:job_id>/calls/<int:call_pk>/deny/", views.call_deny, name="call-deny"),
    path("jobs/<uuid:job_id>/calls/<int:call_pk>/edit/", views.call_edit, name="call-edit"),
    path("confirmations/", views.confirmation_inbox, name="confirmations"),
    path("sessions/", views.session_list, name="sessions"),
    path("sessions/<uuid:session_id>/", views.session_detail, name="session-detail"),
    path("sessions/<uuid:session_id>/continue/", views.session_continue, name="session-continue"),
    path("memories/", views.memory_list, name="memories"),
    path("memories/new/", views.memory_create, name="memory-create"),
    path("memories/<int:memory_id>/edit/", views.memory_edit, name="memory-edit"),
    path("memories/<int:memory_id>/delete/", views.memory_delete, name="memory-delete"),
    path("settings/", views.settings_home, name="settings"),
    path("settings/tools/", views.settings_tools, name="settings-tools"),
    path("settings/tools/preview/", views.settings_tools_preview, name="settings-tools-preview"),
    path("settings/tokens/", views.settings_tokens, name="settings-tokens"),
    path("settings/tokens/new/", views.token_create, name="token-create"),
    path("settings/tokens/<int:token_id>/revoke/", views.token_revoke, name="token-revoke"),
]
