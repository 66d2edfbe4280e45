from django.urls import path

from . import views

urlpatterns = [
    path("settings/schedules/", views.schedule_list, name="schedules"),
    path("settings/schedules/new/", views.schedule_create, name="schedule-create"),
    path("settings/schedules/preview/", views.schedule_preview, name="schedule-preview"),
    path("settings/schedules/<int:schedule_id>/", views.schedule_edit, name="schedule-edit"),
    path("settings/schedules/<int:schedule_id>/run/", views.schedule_run_now, name="schedule-run"),
    path("settings/schedules/<int:schedule_id>/enabled/", views.schedule_toggle, name="schedule-toggle"),
    path("settings/schedules/<int:schedule_id>/delete/", views.schedule_delete, name="schedule-delete"),
    path("settings/hooks/", views.hook_list, name="hooks"),
    path("settings/hooks/new/", views.hook_create, name="hook-create"),
    path("settings/hooks/<slug:slug>/", views.hook_detail, name="hook-detail"),
    path("settings/hooks/<slug:slug>/rotate/", views.hook_rotate, name="hook-rotate"),
    path("settings/hooks/<slug:slug>/delete/", views.hook_delete, name="hook-delete"),
    path("hooks/<slug:slug>", views.hook_receive, name="hook-receive"),
]
