"""One real Prefect server (SQLite) for the whole test session (tests/server_fixture.py)."""

from server_fixture import prefect_server  # noqa: F401  (a session fixture, used by every test here)
