"""The audit store: one place that knows how to open SQLite and PostgreSQL safely.

Everything that touches the database goes through a :class:`Store`. It turns a URL into
an engine with the settings an audit log needs, brings the schema to the current version
(Alembic migrations shipped in ``collector/migrations``), and gives two kinds of
transactions:

* :meth:`Store.session` for reads (and ORM writes that are not part of the chain);
* :meth:`Store.write_transaction` for appending to the hash chain: the chain head is
  locked for the whole transaction, so several threads and processes can append without
  forking the chain (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a transaction-scoped advisory
  lock).

SQLite runs in WAL mode with a generous ``busy_timeout``, so readers never block the
writer and concurrent writers queue instead of failing with "database is locked".

Durability is a setting because it is a real trade-off:

``full`` (the default)
    SQLite ``synchronous=FULL``; PostgreSQL ``synchronous_commit=on``. A transaction that
    has committed survives a process crash *and* a power loss or OS crash.
``normal``
    SQLite ``synchronous=NORMAL`` (WAL); PostgreSQL ``synchronous_commit=off``. Faster;
    a process crash (SIGKILL included) still loses nothing that committed, but a power loss
    or OS crash may lose the last commits (SQLite: those since the last WAL checkpoint;
    PostgreSQL: up to three times ``wal_writer_delay``). The database is never corrupted.

Errors are one sentence (:class:`~collector.errors.ConfigurationError` for a bad setting,
:class:`~collector.errors.StoreUnavailable` for a store that cannot be opened or reached)
and never contain the database password.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlmodel import Session

from collector import config, files
from collector.errors import ConfigurationError, StoreUnavailable

DURABILITIES = ("full", "normal")
#: How long a writer waits for the SQLite write lock before giving up (seconds).
SQLITE_BUSY_TIMEOUT = 60.0
#: Key of the PostgreSQL advisory lock that serialises appends to the chain.
CHAIN_LOCK_KEY = 0x43415544  # "CAUD"
#: Key of the PostgreSQL advisory lock held while migrating the schema.
MIGRATION_LOCK_KEY = 0x4341554D  # "CAUM"
#: The Alembic revision this code expects; open() upgrades older stores to it.
SCHEMA_HEAD = "0009"
#: Revisions this code knows, oldest first (a store at any of them can be upgraded).
KNOWN_REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009")
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]*@")


def _scrub(text: str) -> str:
    """Remove ``user:password@`` from anything that looks like a URL."""
    return _CREDENTIALS.sub("***@", text)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = [ln.strip() for ln in str(orig).splitlines() if ln.strip()]
    return _scrub(lines[0] if lines else type(orig).__name__).rstrip(".")


class Store:
    """An opened audit store (SQLite file or PostgreSQL database)."""

    def __init__(self, engine: sa.Engine, *, url: str, dialect: str, key_dir: Path, durability: str,
                 read_only: bool = False, home: Path | None = None):
        self.engine = engine
        self.url = url  # password-masked, safe for messages
        self.dialect = dialect
        self.key_dir = key_dir
        #: The directory beside the store for its other files (spill files): the SQLite file's
        #: directory, else the data directory.
        self.home = home or key_dir
        self.durability = durability
        self.read_only = read_only
        self._opened_with: dict[str, Any] = {"url": url, "durability": durability, "lock_timeout": None}
        # The same pool, but every transaction begins as a writer (SQLite BEGIN IMMEDIATE),
        # so a transaction never has to upgrade its lock half-way (the cause of most
        # "database is locked" errors under concurrency).
        self._write_engine = engine.execution_options(sqlite_begin="IMMEDIATE")

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        url: str | None = None,
        *,
        create: bool = True,
        durability: str = "full",
        lock_timeout: float | None = None,
        read_only: bool = False,
    ) -> Store:
        """Open (and if needed create and upgrade) the store at ``url``.

        ``url`` defaults to :func:`collector.config.database_url` (``--database``, then
        ``CONNECT_AUDIT_DATABASE_URL``, then ``data/audit.db``). With ``create=False`` a
        missing SQLite file is an error instead of a new empty store: commands that only
        read or check a store (verify, export, purge) use that so a typo is not mistaken
        for an empty log.

        ``lock_timeout`` is how long a writer waits for the write lock before the store
        counts as unavailable (SQLite ``busy_timeout``, default 60 s; PostgreSQL
        ``lock_timeout``, default none); the recorder then spills instead of waiting.

        ``read_only`` opens it for reading only, as the dashboard does (SQLite ``query_only``,
        PostgreSQL ``default_transaction_read_only``): every write is refused by the database
        itself, and a store whose schema is not current is an error instead of an upgrade.
        """
        if durability not in DURABILITIES:
            raise ConfigurationError(
                f"unknown durability {durability!r}; use one of: {', '.join(DURABILITIES)}"
            )
        parsed = _parse_url(config.database_url(url))
        if lock_timeout is not None and not lock_timeout >= 0:
            raise ConfigurationError(f"lock_timeout must be a number of seconds >= 0, not {lock_timeout!r}")
        if parsed.get_backend_name() == "sqlite":
            busy = SQLITE_BUSY_TIMEOUT if lock_timeout is None else lock_timeout
            store = _open_sqlite(parsed, create=create and not read_only, durability=durability,
                                 busy_timeout=busy, read_only=read_only)
        else:
            store = _open_postgresql(parsed, durability=durability, lock_timeout=lock_timeout,
                                     read_only=read_only)
        try:
            store._ensure_schema(create=create and not read_only)
        except BaseException:
            store.close()
            raise
        # Kept so that a writer process can open the same store the same way (the URL may
        # hold a password: it is handed over a pipe, never shown or put on a command line).
        store._opened_with = {"url": config.database_url(url), "durability": durability,
                              "lock_timeout": lock_timeout}
        return store

    def reopen_args(self) -> dict[str, Any]:
        """The arguments of :meth:`open` that open this store again, in another process."""
        return dict(self._opened_with)

    # ------------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A SQLModel session; ``write=True`` takes the SQLite write lock at BEGIN.

        Objects stay usable after the session closes (``expire_on_commit=False``), so a
        caller can return them.
        """
        bind = self._write_engine if write else self.engine
        with self._translate_errors(), Session(bind, expire_on_commit=False) as session:
            yield session

    @contextlib.contextmanager
    def write_transaction(self) -> Iterator[sa.Connection]:
        """A transaction in which this caller alone may append to the chain.

        Commits on a normal exit, rolls back on an exception. Connection-level failures
        (unreachable server, lock wait exceeded, disk I/O error) surface as
        :class:`StoreUnavailable`; constraint violations keep their SQLAlchemy type so that
        callers can tell a duplicate from an outage.
        """
        with self._translate_errors(), self._write_engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": CHAIN_LOCK_KEY})
            yield conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """A write transaction that does not lock the chain (replay keys, installs, rollups).

        On SQLite it still begins IMMEDIATE (one writer at a time is SQLite's rule); on
        PostgreSQL it runs beside chain appends instead of queueing behind them.
        """
        with self._translate_errors(), self._write_engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise StoreUnavailable(f"the audit store {self.url} is unavailable: {_first_line(exc)}") from exc

    def close(self) -> None:
        """Release every pooled connection (the store can be reopened later)."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # ------------------------------------------------------------------ schema

    def schema_version(self) -> str | None:
        """The Alembic revision the store is at, or None for a database without our schema."""
        with self._translate_errors(), self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()

    def _ensure_schema(self, *, create: bool) -> None:
        try:
            version = self.schema_version()
        except sa.exc.DatabaseError as exc:
            raise StoreUnavailable(
                f"{self.url} cannot be read as an audit store: {_first_line(exc)}"
            ) from exc
        if version == SCHEMA_HEAD:
            return  # the common case: no Alembic import, fast start
        if self.read_only:
            state = "has no audit schema" if version is None else f"is at schema version {version}"
            raise StoreUnavailable(
                f"the audit store {self.url} {state} and is opened read-only here (current: {SCHEMA_HEAD}); "
                "open it once with the app or `connect-audit verify --database URL` to create or upgrade it"
            )
        if version is not None and version not in KNOWN_REVISIONS:
            raise StoreUnavailable(
                f"the audit store {self.url} has schema version {version}, newer than this "
                f"connect-audit knows ({SCHEMA_HEAD}); upgrade connect-audit"
            )
        if version is None and not create and self._has_foreign_tables():
            raise StoreUnavailable(f"{self.url} is a database but not a Connect Audit store")
        self.migrate()

    def _has_foreign_tables(self) -> bool:
        with self.engine.connect() as conn:
            return bool(sa.inspect(conn).get_table_names())

    def migrate(self) -> None:
        """Upgrade the schema to :data:`SCHEMA_HEAD`, safely against concurrent openers.

        The upgrade runs in one transaction that holds the write lock (SQLite) or a
        migration advisory lock (PostgreSQL); both have transactional DDL, so a crash
        half-way leaves the old version intact, and a second process opening the store at
        the same time waits and then finds the work done.
        """
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self._translate_errors(), self._write_engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")


# ---------------------------------------------------------------------- URL parsing


def _parse_url(raw: str) -> sa.URL:
    try:
        parsed = sa.engine.make_url(raw)
    except (sa.exc.ArgumentError, ValueError) as exc:
        hint = " (for a file, write sqlite:///PATH)" if "://" not in raw else ""
        raise ConfigurationError(
            f"{_scrub(raw)!r} is not a database URL{hint}; use sqlite:///PATH or "
            "postgresql+psycopg://USER:PASSWORD@HOST/DB"
        ) from exc
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "sqlite" and driver in ("pysqlite", "sqlite"):
        return parsed
    if backend in ("postgresql", "postgres") and driver in ("psycopg", "postgresql", "postgres", "psycopg2"):
        # psycopg 3 is the supported driver; plain postgresql:// means it too.
        return parsed.set(drivername="postgresql+psycopg")
    shown = parsed.drivername
    raise ConfigurationError(
        f"unsupported database driver {shown!r}; use sqlite:///PATH or postgresql+psycopg://HOST/DB"
    )


# ---------------------------------------------------------------------- SQLite


def _switch_to_wal(cur: sqlite3.Cursor, busy_timeout: float) -> str:
    """``PRAGMA journal_mode = WAL``, retried while another opener holds the file.

    Changing the journal mode can meet a lock held by a process that is creating or
    migrating the same new store, and SQLite then answers "database is locked" at once
    instead of calling the busy handler; waiting as the busy timeout would have is right.
    """
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            return cur.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _open_sqlite(parsed: sa.URL, *, create: bool, durability: str, busy_timeout: float,
                 read_only: bool = False) -> Store:
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        raise ConfigurationError(
            "an audit store must be a file: use sqlite:///PATH (in-memory databases lose the log)"
        )
    path = Path(database).expanduser()
    _check_sqlite_file(path, create=create)
    synchronous = "FULL" if durability == "full" else "NORMAL"
    engine = sa.create_engine(
        parsed.set(database=str(path)),
        connect_args={"check_same_thread": False, "timeout": busy_timeout},
        pool_size=8,
        max_overflow=8,
    )
    busy_ms = int(busy_timeout * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Take transaction control away from the sqlite3 module: we issue BEGIN ourselves
        # (below) so that writers can use BEGIN IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
            mode = _switch_to_wal(cur, busy_timeout)
            if str(mode).lower() != "wal":
                raise StoreUnavailable(f"{path} cannot be switched to WAL mode (it is in {mode} mode)")
            cur.execute(f"PRAGMA synchronous = {synchronous}")
            cur.execute("PRAGMA foreign_keys = ON")
            if read_only:
                cur.execute("PRAGMA query_only = ON")  # SQLite itself refuses every write
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    store = Store(
        engine, url=str(path), dialect="sqlite", key_dir=config.key_dir(path.parent.absolute()),
        durability=durability, read_only=read_only, home=path.parent.absolute(),
    )
    try:
        with engine.connect():
            pass
    except sa.exc.DatabaseError as exc:
        engine.dispose()
        raise StoreUnavailable(f"{path} cannot be opened as an SQLite database: {_first_line(exc)}") from exc
    return store


def _check_sqlite_file(path: Path, *, create: bool) -> None:
    """Fail early, in one sentence, on the usual mistakes with a store path."""
    if path.is_dir():
        raise StoreUnavailable(f"{path} is a directory, not an SQLite database file")
    if path.exists():
        if path.stat().st_size == 0 and not create:
            # A zeroed store is total loss of the log, never "an empty chain".
            raise StoreUnavailable(f"{path} is an empty file, not an audit store")
        _check_sqlite_header(path)
        if not os.access(path, os.W_OK):
            raise StoreUnavailable(f"the audit store {path} is not writable")
        files.warn_if_exposed(path)
        return
    if not create:
        raise StoreUnavailable(f"no audit store at {path}")
    try:
        # 0600 before SQLite opens it: its -wal and -shm files then get the same mode.
        files.create_private(path)
    except OSError as exc:
        raise StoreUnavailable(
            f"cannot create the directory {path.parent} for the audit store: {exc.strerror or exc}"
        ) from exc


def _check_sqlite_header(path: Path) -> None:
    """Refuse a file that is not an SQLite database, reading it through SQLite itself.

    Not with Python's open(): closing any descriptor of a database file drops every POSIX
    lock this process's SQLite connections hold on it (another process could then, say,
    delete a live WAL). SQLite's own VFS shares one descriptor per file within a process.
    """
    uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            conn.execute("PRAGMA schema_version").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise StoreUnavailable(f"{path} is not an SQLite database ({exc})") from exc


# ---------------------------------------------------------------------- PostgreSQL


def _open_postgresql(parsed: sa.URL, *, durability: str, lock_timeout: float | None,
                     read_only: bool = False) -> Store:
    try:
        import psycopg  # noqa: F401  (only to give a clear message when it is missing)
    except ImportError as exc:
        raise ConfigurationError(
            "PostgreSQL needs the psycopg driver: pip install 'connect-audit[postgres]'"
        ) from exc
    masked = parsed.render_as_string(hide_password=True)
    commit = "on" if durability == "full" else "off"
    options = f"-c synchronous_commit={commit} -c timezone=UTC"
    if lock_timeout is not None:
        options += f" -c lock_timeout={max(int(lock_timeout * 1000), 1)}"
    if read_only:
        options += " -c default_transaction_read_only=on"  # the server refuses every write
    engine = sa.create_engine(
        parsed,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        connect_args={
            "connect_timeout": 5,
            "application_name": "connect-audit",
            "options": options,
        },
    )
    try:
        with engine.connect():
            pass
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"
        raise StoreUnavailable(f"cannot reach PostgreSQL at {where}: {_first_line(exc)}") from exc
    return Store(
        engine, url=masked, dialect="postgresql", key_dir=config.key_dir(config.data_dir().absolute()),
        durability=durability, read_only=read_only, home=config.data_dir().absolute(),
    )
