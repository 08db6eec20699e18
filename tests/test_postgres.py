"""DATABASE_URL switches the store to PostgreSQL: migrations and the persistence services run there.

Uses the PostgreSQL server on loopback (TEST_POSTGRES_URL), in a throwaway database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

STORE_AND_READ = """
import json
from transcripts import services
from transcripts.models import Conversation
from voice.protocol import records
pk = services.conversation_start(session_id="sess_pg", conversation_id="conv_pg", dialect="ga",
                                 model_name="moshi-demo-random-weights", model_type="sft")
services.conversation_records_apply(conversation_pk=pk, batch=[
    records.ConfigAccepted(session={"instructions": "Be brief."}),
    records.ItemStored(item_id="item_1", item_type="message", role="assistant", status="completed",
                       text=" Bonjour", position=1, response_id="resp_1", audio_ms=800),
    records.ItemTruncated(item_id="item_1", audio_end_ms=400, heard_text=" Bon"),
])
services.conversation_end(conversation_pk=pk, reason="disconnect:1000")
c = Conversation.objects.get(pk=pk)
print(json.dumps({"vendor": __import__("django.db").db.connection.vendor, "ended": c.ended_at is not None,
                  "items": list(c.items.values_list("text", "truncated_at_ms")),
                  "configs": list(c.configs.values_list("config", flat=True))}))
"""


@pytest.fixture
def postgres_url():
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL} (set TEST_POSTGRES_URL): {exc}")
    name = f"realtime_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()


def test_conversations_are_stored_in_postgresql(postgres_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": postgres_url, "VOICE_LOAD_MODEL": "0"}
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], cwd=REPO, env=env, check=True, timeout=120)
    result = subprocess.run(
        [*manage, "shell", "-c", STORE_AND_READ], cwd=REPO, env=env, check=True, capture_output=True, text=True,
        timeout=120,
    )
    stored = json.loads(result.stdout.strip().splitlines()[-1])
    assert stored == {
        "vendor": "postgresql",
        "ended": True,
        "items": [[" Bon", 400]],
        "configs": [{"instructions": "Be brief."}],
    }
