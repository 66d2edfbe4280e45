from django.urls import path

from . import views

urlpatterns = [
    path("settings/tool-servers/", views.server_list, name="tool-servers"),
    path("settings/tool-servers/new/", views.server_create, name="tool-server-create"),
    path("settings/tool-servers/<int:server_id>/test/", views.server_test, name="tool-server-test"),
    path("settings/tool-servers/<int:server_id>/refresh/", views.server_refresh, name="tool-server-refresh"),
    path("settings/tool-servers/<int:server_id>/enabled/", views.server_toggle, name="tool-server-toggle"),
    path("settings/tool-servers/<int:server_id>/remove/", views.server_remove, name="tool-server-remove"),
    path("settings/tool-servers/tools/<int:tool_id>/risk/", views.tool_risk, name="tool-server-tool-risk"),
]
