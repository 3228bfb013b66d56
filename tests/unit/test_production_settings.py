"""The production-shaped server's settings are names Prefect and prefect-redis read: an environment
variable they do not know is ignored without a word, and the server would quietly fall back to its
in-memory broker, ordering and leases (events that never leave the replica, a lock per replica)."""

from __future__ import annotations

import os
from unittest import mock

import pytest

from prefect_gitops.production_server import database_settings, redis_settings, server_process_env

prefect_redis = pytest.importorskip("prefect_redis", reason="prefect-redis is not installed")


def test_every_setting_reaches_prefect_and_prefect_redis(tmp_path):
    """As a server process sees them: the test session's own PREFECT_ settings (its SQLite URL, its
    file lease storage) are in os.environ here and must not reach it."""
    from prefect.settings import Settings
    from prefect_redis.client import RedisMessagingSettings

    settings = {**redis_settings(6390), **database_settings(5439, "not-a-real-password")}
    assert "PREFECT_API_DATABASE_CONNECTION_URL" in os.environ  # tests/conftest.py's server
    with mock.patch.dict(os.environ, server_process_env(tmp_path / "home", settings, ui=False), clear=True):
        server = Settings().server
        redis = RedisMessagingSettings()
    assert (server.events.messaging_broker, server.events.messaging_cache, server.events.causal_ordering) == (
        "prefect_redis.messaging", "prefect_redis.messaging", "prefect_redis.ordering")
    assert server.concurrency.lease_storage == "prefect_redis.lease_storage"
    assert server.docket.url == "redis://127.0.0.1:6390/0"
    assert (redis.host, redis.port, redis.db) == ("127.0.0.1", 6390, 0)
    database = server.database
    assert (database.driver, database.host, database.port, database.user, database.name) == (
        "postgresql+asyncpg", "127.0.0.1", 5439, "prefect", "prefect")
    assert database.password is not None and database.password.get_secret_value() == "not-a-real-password"
    assert database.migrate_on_start is False
    # the connection URL Prefect builds from them carries the password; the settings never print it
    assert "not-a-real-password" in database.connection_url.get_secret_value()  # type: ignore[union-attr]
    assert "not-a-real-password" not in repr(database)
