"""HTTP routes: the admin for stored conversations, the staff console, health and metrics."""

from django.contrib import admin
from django.urls import path

from voice import views
from voice.console import views as console_views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.healthz, name="readyz"),
    path("metrics", views.metrics_view, name="metrics"),
    path("console/", console_views.console, name="console"),
    path("", views.index, name="index"),
]
