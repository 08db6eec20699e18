"""HTTP routes: the admin for stored conversations, and a health check."""

from django.contrib import admin
from django.urls import path

from voice import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.healthz, name="readyz"),
    path("metrics", views.metrics_view, name="metrics"),
    path("", views.index, name="index"),
]
