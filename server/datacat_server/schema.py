"""The database schema (SQLAlchemy Core tables) and the engine that reaches it.

One code path for SQLite and PostgreSQL. Sessions are one row each; everything that grows with a
session (events, metrics, state updates) is an append-only row in its own table, so the cost of a
write never depends on the size of the session. ``state_values`` records every (path, value) leaf
a session's state ever held, as one hash, so "sessions that ever had ``player.level = 3``" is an
exact, indexed lookup.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

metadata = sa.MetaData()

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("product", sa.Text, nullable=False),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("machine_id", sa.Text),
    sa.Column("hostname", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("crashed_at", sa.Float),
    sa.Column("crash_reason", sa.Text),
    sa.Column("last_heartbeat", sa.Float),
    sa.Column("hung", sa.Boolean, nullable=False, default=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Index("ix_sessions_created", "created_at", "id"),
    sa.Index("ix_sessions_product", "product", "version"),
    sa.Index("ix_sessions_machine", "machine_id"),
)


def _appended(name: str, *columns: sa.Column[Any] | sa.Index) -> sa.Table:
    """A table of rows appended to a session: id order is arrival order, body is the JSON."""
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(36), sa.ForeignKey("sessions.id"), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        *columns,
        sa.Column("body", sa.Text, nullable=False),
        sa.Index(f"ix_{name}_session", "session_id", "id"),
    )


def _batched(name: str, *columns: sa.Column[Any] | sa.Index) -> sa.Table:
    """An appended table whose rows may come from ``POST /api/batch``: the operation's id is a
    unique column of the row itself (NULL for single-endpoint writes), so applying a batched
    event costs one INSERT, not a second one into ``applied_ops``."""
    op_id = sa.Column("op_id", sa.String(36))
    # Partial: the single-endpoint rows (op_id NULL) are not in it, so they cost no extra write.
    batched = op_id.is_not(None)
    unique = sa.Index(
        f"ux_{name}_op_id", op_id, unique=True, sqlite_where=batched, postgresql_where=batched
    )
    return _appended(name, *columns, op_id, unique)


events = _batched(
    "events",
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("level", sa.String(16), nullable=False),
    # The dashboard's event-name and "ever hung" filters look sessions up by event name.
    sa.Index("ix_events_name", "name", "session_id"),
)
metrics = _batched(
    "metrics",
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("value", sa.Float, nullable=False),
)
state_updates = _appended("state_updates")

# key = sha256 of "path\0canonical JSON value": bounded size, so any value is indexable.
state_values = sa.Table(
    "state_values",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("session_id", sa.String(36), sa.ForeignKey("sessions.id"), primary_key=True),
)

# Ids of applied batch operations other than events and metrics (which keep theirs in their row).
applied_ops = sa.Table(
    "applied_ops",
    metadata,
    sa.Column("op_id", sa.String(36), primary_key=True),
    sa.Column("applied_at", sa.Float, nullable=False),
    sa.Index("ix_applied_ops_at", "applied_at"),
)


def make_engine(url: str, wal_autocheckpoint: int = 1000) -> Engine:
    """An engine for ``sqlite:///path`` or ``postgresql://...``, with the schema created.
    ``wal_autocheckpoint``: the WAL pages at which SQLite's commit checkpoints the WAL itself
    (SQLite's default; ``storage.Checkpointer`` raises it when it checkpoints instead)."""
    parsed = sa.make_url(engine_url(url))
    in_memory = parsed.get_backend_name() == "sqlite" and sqlite_file(parsed) is None
    # Every thread of a worker keeps its own writer and reader connection for its life
    # (``storage.Storage``), plus one for the checkpoint thread: with the pool's default bound
    # (15), a worker with 8 threads would wait 30 s for its 16th, then fail. (An in-memory
    # SQLite database has a pool of its own, one connection per thread, that takes no bound.)
    pool = {} if in_memory else {"pool_size": 5, "max_overflow": -1}
    engine = sa.create_engine(parsed, **pool)
    if engine.dialect.name == "sqlite":
        _tune_sqlite(engine, wal_autocheckpoint)
    metadata.create_all(engine)
    _upgrade(engine)
    return engine


def sqlite_file(url: sa.URL) -> str | None:
    """The file of a SQLite database; ``None`` for an in-memory one or another database."""
    database = url.database or ""
    in_memory = (
        database in ("", ":memory:")
        or url.query.get("mode") == "memory"  # a URI filename: file:name?mode=memory
        or "mode=memory" in database
    )
    return None if url.get_backend_name() != "sqlite" or in_memory else database


def _upgrade(engine: Engine) -> None:
    """Bring a database made by an older version up to this schema: ``create_all`` creates
    missing tables only, not the columns and indexes added to existing ones since."""
    with engine.begin() as conn:
        inspector = sa.inspect(conn)
        for table in (events, metrics):
            present = {c["name"] for c in inspector.get_columns(table.name)}
            if "op_id" not in present:
                conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN op_id VARCHAR(36)"))
        for table in metadata.sorted_tables:
            for index in table.indexes:
                index.create(conn, checkfirst=True)


def engine_url(url: str) -> str:
    """``postgresql://`` (or ``postgres://``) means psycopg 3; SQLAlchemy would pick psycopg2."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def _tune_sqlite(engine: Engine, wal_autocheckpoint: int) -> None:
    """WAL + synchronous=NORMAL keeps every commit across ``kill -9`` while staying fast.

    pysqlite's own transaction handling would start transactions lazily and as readers, so two
    writers could both read a state and the second merge would lose the first. We take over:
    every write transaction is ``BEGIN IMMEDIATE`` (it holds the write lock from its first read),
    and connections flagged ``readonly`` begin a plain deferred transaction.
    """

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        for pragma in (
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "busy_timeout=10000",
            "foreign_keys=ON",
            f"wal_autocheckpoint={int(wal_autocheckpoint)}",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        readonly = conn.get_execution_options().get("readonly", False)
        # Straight to the driver: this runs on every request, SQLAlchemy's execute is slower.
        driver: Any = conn.connection.driver_connection
        driver.execute("BEGIN" if readonly else "BEGIN IMMEDIATE")
