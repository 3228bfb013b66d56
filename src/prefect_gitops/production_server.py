"""A throwaway production-shaped Prefect server: PostgreSQL, Redis, API replicas and the services apart.

Prefect's self-hosting guide runs production this way, not as one SQLite process: the database on
PostgreSQL; Redis for the event messaging, its de-duplication cache, causal ordering, the concurrency
leases and the docket; several `prefect server start --no-services` API replicas behind a load balancer;
and the background services (event persister, scheduler, repossessor...) in one
`prefect server services start` process of their own. Events therefore reach the database only through
Redis and the services process, and a lock taken through one replica is seen through the other: what
the tests run on this server proves prefect-gitops works there (tests/integration/test_production_server.py).

Run it by hand, from a machine with Debian's PostgreSQL 15 and redis-server and with prefect-redis:

    python -m prefect_gitops.production_server        # prints the replicas' API URLs; Ctrl-C stops it

Nothing here is for a real deployment: the database and Redis live in temporary directories and are
deleted on exit, and only 127.0.0.1 can reach them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

from prefect_gitops.local_server import check_scheduler, check_server_pair, free_port, stop_process, wait_healthy

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")  # Debian's postgresql-15 (Prefect needs 14.9 or newer)
DATABASE, DATABASE_USER = "prefect", "prefect"
UNPRIVILEGED_USER = "nobody"  # PostgreSQL refuses to run as root


def missing_parts() -> str | None:
    """Why this machine cannot run the production-shaped server, or None."""
    import importlib.util

    if not (POSTGRES_BIN / "postgres").exists():
        return f"PostgreSQL 15 is not installed (no {POSTGRES_BIN}/postgres: apt-get install postgresql-15)"
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install redis-server)"
    if importlib.util.find_spec("prefect_redis") is None:
        return "prefect-redis is not installed (pip install prefect-redis, see constraints.txt)"
    return None


@dataclass(frozen=True)
class ProductionServer:
    api_urls: tuple[str, ...]  # one per API replica; a load balancer would spread clients over them
    postgres_port: int
    redis_port: int
    home: Path

    def client_env(self, replica: int = 0) -> dict[str, str]:
        """The settings a client (CLI, worker, flow run) needs to talk to one replica."""
        return {"PREFECT_API_URL": self.api_urls[replica],
                "PREFECT_UI_URL": self.api_urls[replica].removesuffix("/api")}


def redis_settings(redis_port: int) -> dict[str, str]:
    """prefect-redis for everything several server processes must share (names as prefect 3.8's
    settings and prefect-redis 0.3's RedisMessagingSettings spell them)."""
    return {
        # events go from the replica that received them to the services process through Redis streams
        "PREFECT_SERVER_EVENTS_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        # the one-writer lock's leases: a slot taken through one replica is renewed and released
        # through another, and survives any one server process
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_SERVER_DOCKET_URL": f"redis://127.0.0.1:{redis_port}/0",
        "PREFECT_REDIS_MESSAGING_HOST": "127.0.0.1",
        "PREFECT_REDIS_MESSAGING_PORT": str(redis_port),
        "PREFECT_REDIS_MESSAGING_DB": "0",
    }


def database_settings(postgres_port: int, password: str) -> dict[str, str]:
    """The database as separate settings: the password travels only in the processes' environment,
    never in a connection URL that could end up in a log or a process list."""
    return {
        "PREFECT_SERVER_DATABASE_DRIVER": "postgresql+asyncpg",
        "PREFECT_SERVER_DATABASE_HOST": "127.0.0.1",
        "PREFECT_SERVER_DATABASE_PORT": str(postgres_port),
        "PREFECT_SERVER_DATABASE_USER": DATABASE_USER,
        "PREFECT_SERVER_DATABASE_NAME": DATABASE,
        "PREFECT_SERVER_DATABASE_PASSWORD": password,
        # migrated once before the replicas start: replicas that all migrate on start race each other
        "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",
    }


def server_process_env(home: Path, settings: dict[str, str], ui: bool) -> dict[str, str]:
    """The environment of one server process: the caller's, without its PREFECT_ settings (the test
    session's SQLite URL and file lease storage must not leak in), plus the production settings."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    home.mkdir(parents=True, exist_ok=True)
    return {**inherited, **settings, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": str(ui).lower()}


# -- PostgreSQL ---------------------------------------------------------------------------------------

def _as_unprivileged(argv: list[str]) -> list[str]:
    """`argv` as the unprivileged user when we are root (setpriv execs: the pid is the command's own)."""
    if os.geteuid() != 0:
        return argv
    user = pwd.getpwnam(UNPRIVILEGED_USER)
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--", *argv]


def _owned_by_unprivileged(path: Path) -> None:
    if os.geteuid() == 0:
        user = pwd.getpwnam(UNPRIVILEGED_USER)
        os.chown(path, user.pw_uid, user.pw_gid)


def _run(argv: list[str], log: IO[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(argv[argv.index('--') + 1] if '--' in argv else argv[0]).name} "
                           f"exited {done.returncode} (log: {log.name})")


@contextlib.contextmanager
def running_postgres(password: str, log: IO[str]) -> Iterator[int]:
    """A PostgreSQL cluster in a temporary directory of its own, owned by the unprivileged user,
    listening on a free loopback port (its unix socket in that directory); yields the port once the
    database exists, stops it and deletes everything on exit."""
    root = Path(tempfile.mkdtemp(prefix="prefect-gitops-postgres-"))
    try:
        _owned_by_unprivileged(root)
        password_file = root / "password"
        password_file.write_text(password)
        password_file.chmod(0o600)
        _owned_by_unprivileged(password_file)
        _run(_as_unprivileged([str(POSTGRES_BIN / "initdb"), "-D", str(root / "data"), "-U", DATABASE_USER,
                               "--auth=scram-sha-256", f"--pwfile={password_file}", "-E", "UTF8",
                               "--locale=C"]), log)
        password_file.unlink()
        port = free_port()
        proc = subprocess.Popen(_as_unprivileged([
            str(POSTGRES_BIN / "postgres"), "-D", str(root / "data"), "-p", str(port), "-k", str(root),
            "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"]),
            stdout=log, stderr=subprocess.STDOUT)
        try:
            client_env = {**os.environ, "PGPASSWORD": password}
            _wait_postgres(port, proc, client_env, log)
            _run([str(POSTGRES_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", DATABASE_USER,
                  DATABASE], log, env=client_env)
            yield port
        finally:
            proc.send_signal(signal.SIGINT)  # "fast" shutdown: SIGTERM would wait for clients to leave
            stop_process(proc)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _wait_postgres(port: int, proc: subprocess.Popen[Any], env: dict[str, str], log: IO[str],
                   timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run([str(POSTGRES_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port),
                          "-U", DATABASE_USER, "-d", "postgres"], env=env).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL did not start on port {port} (log: {log.name})")
        time.sleep(0.2)


# -- Redis --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def running_redis(log: IO[str]) -> Iterator[int]:
    """redis-server on a free loopback port, nothing persisted; yields the port once it answers."""
    import redis

    root = Path(tempfile.mkdtemp(prefix="prefect-gitops-redis-"))
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(root)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port} (log: {log.name})")
            time.sleep(0.1)
        client.close()
        yield port
    finally:
        stop_process(proc)
        shutil.rmtree(root, ignore_errors=True)


# -- Prefect ------------------------------------------------------------------------------------------

def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


@contextlib.contextmanager
def running_production_server(home: Path, replicas: int = 2, ui: bool = False) -> Iterator[ProductionServer]:
    """PostgreSQL and Redis, Prefect's migrations run once, `replicas` API replicas and one services
    process, each server process with its own PREFECT_HOME under `home` and its log there; yields once
    every replica is healthy, stops everything on exit."""
    missing = missing_parts()
    if missing:
        raise RuntimeError(f"cannot start the production-shaped server: {missing}")
    check_server_pair()
    home.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(home / "backing-services.log", "w"))
        postgres_port = stack.enter_context(running_postgres(password, log))
        redis_port = stack.enter_context(running_redis(log))
        settings = {**database_settings(postgres_port, password), **redis_settings(redis_port)}
        migrate_env = server_process_env(home / "migrate", settings, ui)
        _run(_prefect("server", "database", "upgrade", "-y"), log, env=migrate_env)

        processes: list[tuple[subprocess.Popen[bytes], str | None, Path]] = []

        def stop_prefect() -> None:  # before PostgreSQL and Redis, which the ExitStack stops after
            for proc, _, _ in reversed(processes):
                stop_process(proc)

        stack.callback(stop_prefect)
        for replica in range(1, replicas + 1):
            port, replica_home = free_port(), home / f"replica-{replica}"
            env = server_process_env(replica_home, settings, ui)
            if replica > 1:
                # the first replica registers Prefect's block types; replicas that all do it as they
                # start together race for the same rows, and one of them logs a failed insert
                env["PREFECT_SERVER_REGISTER_BLOCKS_ON_START"] = "false"
            out = stack.enter_context(open(replica_home / "server.log", "w"))
            proc = subprocess.Popen(_prefect("server", "start", "--no-services", "--host", "127.0.0.1",
                                             "--port", str(port)), stdout=out, stderr=subprocess.STDOUT, env=env)
            processes.append((proc, f"http://127.0.0.1:{port}/api", replica_home / "server.log"))
        services_home = home / "services"
        env = server_process_env(services_home, settings, ui)
        out = stack.enter_context(open(services_home / "services.log", "w"))
        services = subprocess.Popen(_prefect("server", "services", "start"), stdout=out, stderr=subprocess.STDOUT,
                                    env=env)
        processes.append((services, None, services_home / "services.log"))
        for proc, api_url, log_path in processes:
            if api_url is not None:
                wait_healthy(api_url, proc, log_path=log_path)
        if services.poll() is not None:
            raise RuntimeError(f"prefect server services start exited {services.returncode} "
                               f"(log: {services_home / 'services.log'})")
        yield ProductionServer(api_urls=tuple(url for _, url, _ in processes if url is not None),
                               postgres_port=postgres_port, redis_port=redis_port, home=home)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefect_gitops.production_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=2, help="API replicas to start (default 2)")
    parser.add_argument("--home", type=Path, help="where the server processes keep their homes and logs "
                        "(default: a temporary directory, deleted on exit)")
    parser.add_argument("--no-ui", action="store_true", help="do not serve the UI from the replicas")
    args = parser.parse_args(argv)
    home = args.home or Path(tempfile.mkdtemp(prefix="prefect-gitops-production-"))
    # a SIGTERM (kill, a supervisor stopping it) stops everything as Ctrl-C does: without this the
    # process dies at once and leaves PostgreSQL, Redis and the API replicas running
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        with running_production_server(home, args.replicas, ui=not args.no_ui) as server:
            import asyncio

            os.environ.update(server.client_env(0))
            scheduled = asyncio.run(check_scheduler())  # the services process schedules runs
            for n, url in enumerate(server.api_urls, start=1):
                print(f"replica {n}: PREFECT_API_URL={url}")
            print(f"PostgreSQL on 127.0.0.1:{server.postgres_port}, Redis on 127.0.0.1:{server.redis_port}, "
                  f"services' scheduler working ({scheduled} run(s) scheduled); logs in {home}")
            print("Ctrl-C stops everything.", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    finally:
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
