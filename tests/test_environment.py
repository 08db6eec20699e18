"""One settings source: voice/environment.py's VARIABLES, parsed once, and the docs generated from it."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from voice.conf import DEFAULTS, get_config
from voice.environment import BY_ENV, VARIABLES, read_environment, voice_settings
from voice.management.commands.environment import env_example, markdown_table

REPO = Path(__file__).resolve().parent.parent


def test_the_readme_table_is_the_generated_one() -> None:
    readme = (REPO / "README.md").read_text()
    assert markdown_table() in readme, "regenerate it: manage.py environment --markdown"


def test_env_example_is_the_generated_one() -> None:
    assert (REPO / ".env.example").read_text() == env_example(), (
        "regenerate it: manage.py environment --env > .env.example"
    )


def test_every_variable_is_named_once_and_every_voice_key_has_one() -> None:
    assert len(BY_ENV) == len(VARIABLES)
    keys = [variable.key for variable in VARIABLES if variable.key]
    assert len(keys) == len(set(keys)) == len(DEFAULTS)


def test_an_empty_environment_gives_every_default_typed() -> None:
    values = read_environment({})
    for variable in VARIABLES:
        assert values[variable.env] == variable.default and type(values[variable.env]) is type(variable.default)
    assert voice_settings(values) == DEFAULTS


@pytest.mark.parametrize(
    ("env", "raw", "parsed"),
    [
        ("REALTIME_MAX_SESSIONS", " 12 ", 12),
        ("REALTIME_TICK_MS", "40", 40.0),
        ("DJANGO_DEBUG", "yes", True),
        ("DJANGO_DEBUG", "Off", False),
        ("DJANGO_ALLOWED_HOSTS", "a.example, b.example,,", ["a.example", "b.example"]),
        ("SFT_MODEL", "kyutai/moshiko-pytorch-bf16", "kyutai/moshiko-pytorch-bf16"),
        ("REALTIME_MAX_SESSIONS", "", 8),  # empty is unset
    ],
)
def test_values_are_parsed_once_by_the_type_of_their_default(env: str, raw: str, parsed: object) -> None:
    value = read_environment({env: raw})[env]
    assert value == parsed and type(value) is type(parsed)


@pytest.mark.parametrize(
    ("env", "raw"), [("REALTIME_MAX_SESSIONS", "eight"), ("DJANGO_DEBUG", "maybe"), ("ASR_TIMEOUT_S", "1s")]
)
def test_a_bad_value_names_its_variable(env: str, raw: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=env):
        read_environment({env: raw})


def test_an_override_of_the_wrong_type_is_refused(settings) -> None:
    settings.VOICE = {**settings.VOICE, "MAX_SESSIONS": "8"}
    with pytest.raises(ImproperlyConfigured, match="REALTIME_MAX_SESSIONS"):
        get_config()
