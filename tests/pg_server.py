"""A throw-away PostgreSQL server for the tests: its own data folder, unix socket folder and free
port, started with the machine's `initdb` and `pg_ctl` (as the `postgres` user when the tests run as
root, which PostgreSQL refuses to run as) and stopped with `pg_ctl stop`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


class NoServer(Exception):
    """No PostgreSQL server can be started here; the message says why."""


def bindir() -> Path:
    """The folder of `initdb` and `pg_ctl`, as `pg_config --bindir` names it."""
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        raise NoServer("no PostgreSQL server binaries: pg_config is not on PATH")
    found = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True).stdout.strip())
    for tool in ("initdb", "pg_ctl"):
        if not (found / tool).exists():
            raise NoServer(f"no PostgreSQL server binaries: {found / tool} is missing")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PgServer:
    """One server; `database()` makes a fresh, empty database and returns its URL."""

    def __init__(self) -> None:
        self.bin = bindir()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="dltool-pg-"))
        self.data, self.sockets, self.port = self.root / "data", self.root / "sockets", free_port()
        self.count = 0

    def _as_server_user(self, *argv: str | Path) -> subprocess.CompletedProcess:
        command = [str(a) for a in argv]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    def start(self) -> PgServer:
        self.sockets.mkdir()
        if self.user is not None:
            shutil.chown(self.root, self.user)
            shutil.chown(self.sockets, self.user)
        steps = [(self.bin / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"),
                 (self.bin / "pg_ctl", "-D", self.data, "-l", self.root / "server.log", "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
                  "-c max_connections=100", "start")]
        for step in steps:
            done = self._as_server_user(*step)
            if done.returncode != 0:
                log = self.root / "server.log"
                tail = log.read_text()[-400:] if log.exists() else ""
                self.stop()
                raise NoServer(f"{Path(step[0]).name} failed: {(done.stderr or done.stdout).strip()[-400:]} {tail}")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new empty database (nothing of Optuna's in it yet): its URL."""
        import psycopg

        self.count += 1
        name = f"study_{self.count}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._as_server_user(self.bin / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
