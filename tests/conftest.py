"""Shared test set-up: one demo checkpoint and one ModelManager for the whole run.

TIMEOUT is the one constant every wait in the suite takes: the model can be slow on a 2-core CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .services import ServiceUnavailable, Throwaway, start_postgres, start_redis

TIMEOUT = float(os.environ.get("TEST_TIMEOUT", "20"))
AUDIO_DIR = Path(__file__).resolve().parent / "audio"  # test speech; its README says what each file holds

# Settings the tests run under: the model steps as soon as a frame is ready (no 80 ms pacing), the
# demo model's responses (it never falls silent) end after 1.6 s of output, and the input queue
# holds 20 s, since tests send whole recordings at once (test_engine checks the bound itself).
TEST_VOICE = {
    "TICK_MS": 0.0,
    "INPUT_QUEUE_FRAMES": 256,
    "MAX_SESSIONS": 4,
    "RESPONSE_MAX_MS": 1600,
    "LOAD_MODEL": "0",
    "OPEN_ENDPOINT": "1",  # pytest-django runs with DEBUG off; tests/test_access.py turns keys on
}


def _service(variable: str, start: object) -> Iterator[str]:
    given = os.environ.get(variable)
    if given:
        yield given
        return
    try:
        service: Throwaway = start()  # type: ignore[operator]
    except ServiceUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield service.url
    finally:
        service.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server's admin URL: TEST_POSTGRES_URL, else a throwaway one for this session."""
    yield from _service("TEST_POSTGRES_URL", start_postgres)


@pytest.fixture
def database_url(postgres_url: str) -> Iterator[str]:
    """A fresh database on the session's PostgreSQL server, dropped after the test."""
    import uuid

    import psycopg

    admin = psycopg.connect(postgres_url, autocommit=True, connect_timeout=10)
    name = f"realtime_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url.rsplit("/", 1)[0] + "/" + name
    finally:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis server's URL (no database number): TEST_REDIS_URL, else a throwaway one for this session."""
    yield from _service("TEST_REDIS_URL", start_redis)


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from voice.engine.demo_checkpoint import write_demo_checkpoint

    return write_demo_checkpoint(tmp_path_factory.mktemp("demo-checkpoint"), context=50)


@pytest.fixture(scope="session")
def model_manager(demo_checkpoint: Path):
    """The process-wide manager, loaded from the demo checkpoint through the real loading code."""
    from voice.engine import manager as manager_module

    config = manager_module.ManagerConfig(
        models={},
        demo_dir=demo_checkpoint,
        max_sessions=TEST_VOICE["MAX_SESSIONS"],
        tick_ms=TEST_VOICE["TICK_MS"],
        inbox_frames=TEST_VOICE["INPUT_QUEUE_FRAMES"],
    )
    installed = manager_module.install_manager(config)
    yield installed
    installed.stop()  # join the inference thread before the interpreter exits


@pytest.fixture(autouse=True)
def voice_test_settings(settings):
    settings.VOICE = {**settings.VOICE, **TEST_VOICE}
    yield


def audio_path(name: str) -> Path:
    path = AUDIO_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such test audio file; tests/audio/README.md lists the ones there are")
    return path
