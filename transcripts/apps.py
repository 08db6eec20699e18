from django.apps import AppConfig


class TranscriptsConfig(AppConfig):
    name = "transcripts"
    verbose_name = "Conversations and transcripts"
    default_auto_field = "django.db.models.BigAutoField"
