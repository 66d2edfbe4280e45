from django.urls import path

from . import views

urlpatterns = [
    path("settings/callbacks/", views.settings_callbacks, name="settings-callbacks"),
    path("settings/callbacks/rotate/", views.callback_secret_rotate, name="callback-secret-rotate"),
    path("settings/notifications/", views.settings_notifications, name="settings-notifications"),
]
