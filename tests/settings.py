"""The settings the test suite runs under: the project's own, with a secret key.

The project's settings refuse to load without DJANGO_SECRET_KEY unless DEBUG is on, and
pytest-django loads them before any conftest.py runs; so the key is given here, for this process
and the subprocesses tests start (manage.py commands), which inherit the environment.
"""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-insecure-key")

from realtime_project.settings import *  # noqa: E402, F403
