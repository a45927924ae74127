"""Where a study lives: the `--storage` URL checked before anything is created (its driver installed,
not an in-memory database), shown without its secrets, and opened by any number of processes at once.

Optuna creates its tables the first time a process opens a database; two processes doing that at
the same moment collide (a duplicate `pg_type` row on PostgreSQL, a duplicate `alembic_version` row
on SQLite). Opening is therefore serialised: a PostgreSQL advisory lock, a MySQL named lock, or an
OS lock on the SQLite file.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from pathlib import Path
from typing import Any, Iterator

from dltool.errors import ConfigError, MissingExtra, RunFailed, first_line

# The driver a bare `postgresql://` or `mysql://` URL gets, and the extra that installs it.
DRIVERS = {"postgresql": ("psycopg", "postgres"), "mysql": ("pymysql", "mysql"), "mariadb": ("pymysql", "mysql")}
LOCK_KEY = 7_346_251_018  # the advisory lock every dltool process takes to open a PostgreSQL study
LOCK_NAME = "dltool_optuna_tables"
USER_PASSWORD = re.compile(r"^([^:/?#]+://[^:/@?#]*:)([^@/?#]*)@")
SECRET_QUERY = re.compile(r"([?&][^=&]*(?:pass|pwd|secret|token)[^=&]*=)[^&]*", re.IGNORECASE)


def redact(url: str) -> str:
    """The storage URL as it may be shown or written: no password, also none in its query string.
    The rest stays as the user wrote it."""
    return SECRET_QUERY.sub(r"\1***", USER_PASSWORD.sub(r"\1***@", url, count=1))


def scrub(message: str, url: str) -> str:
    """`message` (a driver's error) with every secret of `url` in it replaced by ***."""
    from urllib.parse import unquote

    secrets = [unquote(m.group(2)) for m in USER_PASSWORD.finditer(url)]
    secrets += [unquote(m.group(0).split("=", 1)[1]) for m in SECRET_QUERY.finditer(url)]
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        message = message.replace(secret, "***")
    return message


def resolve(url: str) -> str:
    """The URL Optuna is given: a bare `postgresql://` gets psycopg (3), a bare `mysql://` PyMySQL.

    Raises:
        ConfigError: not a database URL, an unknown database, or an in-memory SQLite database
            (each process would hold its own study, and it would vanish with the process).
        MissingExtra: the URL's driver is not installed; the message names the extra to install.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"--storage: {redact(url)} is not a database URL; give e.g. sqlite:///study.db or "
                          "postgresql://user:password@host/dbname") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite" and (parsed.database in (None, "", ":memory:") or "mode=memory" in url):
        raise ConfigError(f"--storage: {redact(url)} is an in-memory database, which each process keeps to itself "
                          "and loses when it ends; give a file (sqlite:///study.db) or leave --storage out "
                          "(runs/NAME/study.db)")
    if "+" not in parsed.drivername and backend in DRIVERS:
        parsed = parsed.set(drivername=f"{backend}+{DRIVERS[backend][0]}")
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise ConfigError(f"--storage: {redact(url)}: unknown database {backend!r}; Optuna keeps studies in "
                          "sqlite, postgresql or mysql") from None
    try:
        dialect.import_dbapi()
    except ImportError:
        extra = DRIVERS.get(backend, (None, None))[1]
        driver = parsed.get_driver_name()
        how = f'pip install "dltool[{extra}]"' if extra and driver == DRIVERS[backend][0] else f"install {driver}"
        raise MissingExtra(f"--storage: {redact(url)} needs the {driver} driver, which is not installed: {how}") from None
    return parsed.render_as_string(hide_password=False)


def open_study(optuna: Any, url: str, name: str, direction: str, pruner: Any, heartbeat: int,
               retries: int, given: str) -> Any:
    """The study `name` in the database at `url` (`given` as `resolve` returned it), created on first use.

    Raises:
        ConfigError: the database cannot be reached or opened (the message holds no secret).
    """
    from sqlalchemy.exc import SQLAlchemyError

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    try:
        with _serialised(url), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats, since 2.x
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                                 grace_period=2 * heartbeat, **_retry(optuna, retries))
            return optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction=direction,
                                       pruner=pruner)
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError, OSError) as exc:
        raise ConfigError(f"--storage: cannot open {redact(given)}: {scrub(root_line(exc), url)}") from None


def _retry(optuna: Any, retries: int) -> dict:
    """Retry a trial whose process died, under the name this Optuna version gives the callback."""
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9
        return {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retries)}
    return {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=retries)}


@contextlib.contextmanager
def _serialised(url: str) -> Iterator[None]:
    """Held while a process creates or opens Optuna's tables: one process at a time per database."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        with _file_lock(Path(parsed.database)):
            yield
        return
    if backend not in ("postgresql", "mysql", "mariadb"):
        yield
        return
    take, give = (("SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)") if backend == "postgresql"
                  else ("SELECT GET_LOCK(:k, 600)", "SELECT RELEASE_LOCK(:k)"))
    key = LOCK_KEY if backend == "postgresql" else LOCK_NAME
    engine = create_engine(url, poolclass=_null_pool())
    try:
        with engine.connect() as connection:
            connection.execute(text(take), {"k": key})
            try:
                yield
            finally:
                connection.execute(text(give), {"k": key})
    finally:
        engine.dispose()


def _null_pool() -> Any:
    from sqlalchemy.pool import NullPool

    return NullPool


@contextlib.contextmanager
def _file_lock(database: Path) -> Iterator[None]:
    """An OS lock (flock) on the SQLite file itself; SQLite's own locks are fcntl locks, which flock
    leaves alone. An empty new file is a valid empty database."""
    import fcntl
    import os

    fd = os.open(database, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def database_failed(exc: BaseException, url: str) -> RunFailed:
    """A write the study's database refused mid-study (a full disk, a lost server) as one line."""
    return RunFailed(f"tune: the study's database {redact(url)} refused a write: {scrub(root_line(exc), url)}; "
                     "free space there (or reach the server again) and run the same dltool tune command to go on")


def root_line(exc: BaseException) -> str:
    """The first line of the error at the root of `exc` (Optuna wraps the database's own error, whose
    text says what happened, in one of its own that does not)."""
    chain = [exc]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
        if len(chain) > 20:
            break
    for error in reversed(chain):
        if str(error).strip():
            return first_line(error)
    return type(exc).__name__
