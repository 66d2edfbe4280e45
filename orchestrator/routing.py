from django.urls import path

from . import consumers, consumers_html

websocket_urlpatterns = [
    path("ws/jobs/<uuid:job_id>/", consumers.JobEventsConsumer.as_asgi()),
    path("ws/jobs/<uuid:job_id>/html/", consumers_html.JobPageStream.as_asgi()),
    path("ws/me/", consumers_html.UserStream.as_asgi()),
]
