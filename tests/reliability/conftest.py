"""The reliability trials run against the session's real Prefect server (tests/server_fixture.py)."""

from server_fixture import prefect_server  # noqa: F401  (a session fixture, used by every test here)
