from django.contrib import admin
from django.urls import include, path

from orchestrator.api import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("orchestrator.urls")),
    path("", include("orchestrator.triggers.urls")),
    path("", include("orchestrator.delivery.urls")),
    path("", include("orchestrator.mcp.urls")),
    path("", api.urls),
]
