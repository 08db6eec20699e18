"""HTTP routes: the admin for stored conversations, the staff console, the playground, health and
metrics, and the Live API's HTTP resources (answered 501: the Live API is served over its WebSocket)."""

from django.contrib import admin
from django.urls import path

from voice import live_http, playground, views
from voice.console import views as console_views
from voice.webrtc import views as webrtc_views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.metrics_view, name="metrics"),
    path("console/", console_views.console, name="console"),
    path("playground/", playground.playground, name="playground"),
    path("playground/secret", playground.mint_secret, name="playground-secret"),
    path("v1/realtime/calls", webrtc_views.calls, name="realtime-calls"),
    path("v1/realtime/calls/<str:call_id>/hangup", webrtc_views.hangup, name="realtime-call-hangup"),
    path("v1/realtime/client_secrets", webrtc_views.client_secrets, name="realtime-client-secrets"),
    path("v1/live/sessions", live_http.sessions, name="live-sessions"),
    path("v1/live/sessions/<str:session_id>/<str:action>", live_http.session_action, name="live-session-action"),
    path("", views.index, name="index"),
]
