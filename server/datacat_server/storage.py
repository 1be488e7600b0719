"""Writes: every change to stored data goes through this module, inside one transaction.

Each function takes a ``Connection`` already inside a write transaction (``Storage.write()``), so a
single endpoint and a whole ``POST /api/batch`` share the same code. Events and metrics are single
``INSERT``\\ s (the session's existence is checked by the foreign key, not by a read); a state
update reads and rewrites one small row under the write lock (``BEGIN IMMEDIATE`` on SQLite,
``SELECT ... FOR NO KEY UPDATE`` on PostgreSQL), so concurrent writers never lose a key.

PostgreSQL deadlocks: an event's INSERT takes a KEY SHARE lock on its session through the
foreign key. Sessions are therefore locked ``FOR NO KEY UPDATE`` (which does not conflict with
KEY SHARE, unlike ``FOR UPDATE``), a batch locks its sessions in id order first
(``lock_sessions``), and ``Storage.run`` runs a transaction again when PostgreSQL still broke a
deadlock or a serialization conflict by rolling it back.

SQLite checkpoints (copying the write-ahead log back into the database file) run in a thread of
their own (``Checkpointer``), not in the commit of whichever request crossed SQLite's threshold.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import operator
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from datacat.errors import ValidationError
from datacat.limits import CRASH_EVENT, HUNG_EVENT, RECOVERED_EVENT
from datacat.merge import deep_merge
from datacat.model import JSONDict, now
from datacat.model import dumps as dumps  # the stored JSON form (re-exported: storage.dumps)
from datacat_server.schema import (
    events,
    make_engine,
    metrics,
    sessions,
    sqlite_file,
    state_updates,
    state_values,
)

T = TypeVar("T")

#: How often ``Storage.run`` tries a transaction again after a deadlock or serialization failure.
RETRIES = 3
_TRANSIENT = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure
#: Seconds between two checkpoints of a SQLite database by ``Checkpointer`` (0: SQLite's commits
#: checkpoint themselves, as SQLite does by default).
CHECKPOINT_INTERVAL = 0.1
#: With ``Checkpointer`` running, the WAL pages (4 KiB each) at which a commit still checkpoints
#: by itself: only a backstop for when the thread falls behind (SQLite's default is 1,000).
WAL_BACKSTOP = 10_000

log = logging.getLogger(__name__)


class NotFound(Exception):
    """The session does not exist."""


class Storage:
    """The engine plus the server's status rule (heartbeat timeout).

    Each thread keeps one connection for writes and one for reads across requests: checking a
    connection out of the pool and back in for every request cost more than the insert itself.
    """

    def __init__(
        self,
        url: str,
        heartbeat_timeout: float = 60.0,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
    ) -> None:
        self.engine = make_engine(url, WAL_BACKSTOP if checkpoint_interval > 0 else 1000)
        self.heartbeat_timeout = heartbeat_timeout
        self._local = threading.local()
        path = sqlite_file(self.engine.url)
        self._writers = WriterLock(path)
        # (an in-memory database has no log to checkpoint, and its pool, one connection per
        # thread, would keep the checkpoint threads' connections)
        self.checkpoints = (
            Checkpointer(self.engine, checkpoint_interval)
            if checkpoint_interval > 0 and path
            else None
        )

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        conn = self._connection("writer")
        with self._writers, conn.begin():
            yield conn
        if self.checkpoints is not None:
            self.checkpoints.wrote()

    def run(self, work: Callable[[Connection], T], retry: tuple[type[Exception], ...] = ()) -> T:
        """``work(conn)`` in one write transaction; when PostgreSQL rolled it back to break a
        deadlock or a serialization conflict (or it raised one of ``retry``), it runs again
        from the start, at most ``RETRIES`` times."""
        for attempt in range(RETRIES + 1):
            try:
                with self.write() as conn:
                    return work(conn)
            except Exception as exc:
                if attempt == RETRIES or not (isinstance(exc, retry) or is_transient(exc)):
                    raise
        raise AssertionError("unreachable")

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (on SQLite it does not take the write lock)."""
        conn = self._connection("reader")
        with conn.begin():
            yield conn

    def _connection(self, role: str) -> Connection:
        conn: Connection | None = getattr(self._local, role, None)
        if conn is None or conn.closed or conn.invalidated:
            conn = self.engine.connect().execution_options(readonly=role == "reader")
            setattr(self._local, role, conn)
        return conn

    def dispose(self) -> None:
        """Forget inherited connections (after ``fork``: a child must open its own) and the
        parent's checkpoint thread (a child starts its own on its first write)."""
        self._local = threading.local()
        self.engine.dispose(close=False)
        if self.checkpoints is not None:
            self.checkpoints = Checkpointer(self.engine, self.checkpoints.interval)


class Checkpointer:
    """Copies a SQLite database's write-ahead log back into its file, from a thread of its own.

    By default SQLite does that copy (and syncs the file) in the commit that takes the log past
    1,000 pages, so under steady ingest about one write request in ten paid for it. A stream of
    pytest-shaped batches through gunicorn (``benchmarks/server_checkpoints.py``) had a 99th
    percentile a third lower with the copies in this thread every 0.1 s, and took 3-5 % less
    time in all; in one process (Flask's test client), the 90th percentile halved. The commits'
    own threshold is then only a backstop (``WAL_BACKSTOP``). Frequent passes keep each copy
    small: the file's sync, which holds up a commit running at the same moment, stays short.

    A pass runs every ``interval`` seconds while there were writes since the last one. It is a
    PASSIVE checkpoint: it never waits for, nor blocks, a reader or a writer; what it could not
    copy yet (pages an open read still needs) the next pass copies. Each process runs its own
    thread, started by its first write; the thread ends after ``IDLE_PASSES`` passes without a
    write (the next write starts another), so an idle server, or a test's app, keeps none.
    """

    IDLE_PASSES = 3

    def __init__(self, engine: Engine, interval: float) -> None:
        self.engine = engine
        self.interval = interval
        self.passes = 0  # checkpoints run so far
        self.last: tuple[int, ...] | None = None  # (busy, log pages, checkpointed pages)
        self._dirty = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._failed = False

    @property
    def running(self) -> bool:
        return self._thread is not None

    def wrote(self) -> None:
        """A write transaction committed: the next pass has work (start the thread if none).
        Never raises: the write is committed already, and its request must not fail now."""
        with self._lock:
            self._dirty = True
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._run, name="datacat-checkpoint", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # no thread to be had (shutdown, a limit): the next write retries
                self._log_failure("cannot start the checkpoint thread")
                return
            self._thread = thread

    def _run(self) -> None:
        idle = 0
        connection: Any = None
        try:
            while True:
                time.sleep(self.interval)
                with self._lock:  # the decision to end is taken where ``wrote`` looks
                    if not self._dirty:
                        idle += 1
                        if idle >= self.IDLE_PASSES:
                            self._thread = None
                            return
                        continue
                    self._dirty = False
                idle = 0
                if connection is None:
                    connection = self.engine.raw_connection()
                cursor = connection.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self.last = tuple(cursor.fetchone())
                self.passes += 1
        except Exception:  # the commits' backstop still bounds the log; the next write retries
            self._log_failure("checkpoint failed")
            with self._lock:
                self._thread = None
        finally:
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.close()  # back to the pool

    def _log_failure(self, what: str) -> None:
        if not self._failed:  # once: a broken disk must not flood the log
            self._failed = True
            log.exception("%s (SQLite's own checkpoints still run, past WAL_BACKSTOP)", what)


def is_transient(exc: BaseException) -> bool:
    """A deadlock or serialization failure (the driver's, or SQLAlchemy's wrapping of it)."""
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlstate", None) in _TRANSIENT


def lock_sessions(conn: Connection, session_ids: Iterable[str]) -> None:
    """Lock these sessions in id order (PostgreSQL; SQLite has one writer at a time anyway), so
    two batches locking the same sessions never wait for each other crosswise."""
    wanted = sorted(set(session_ids))
    if wanted and conn.dialect.name == "postgresql":
        query = sa.select(sessions.c.id).where(sessions.c.id.in_(wanted)).order_by(sessions.c.id)
        conn.execute(query.with_for_update(key_share=True)).all()


class WriterLock:
    """Lets one SQLite writer at a time in, across threads and processes, without polling.

    SQLite makes a second writer wait in its busy handler, which sleeps 1 ms, 2 ms, 5 ms, ...
    between retries; under steady load that costs more than the writes. A blocking ``flock``
    wakes the next writer the moment the lock is free. PostgreSQL and an in-memory database
    (``path`` None) need none.
    """

    def __init__(self, path: str | None) -> None:
        self.path = f"{path}-writer.lock" if path else None
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._pid = 0

    def __enter__(self) -> None:
        if self.path is None:
            return
        self._thread_lock.acquire()
        try:
            fcntl.flock(self._file(), fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()  # never leave the other threads locked out
            raise

    def __exit__(self, *exc: object) -> None:
        if self.path is None:
            return
        fcntl.flock(self._file(), fcntl.LOCK_UN)
        self._thread_lock.release()

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked child needs its own file
            assert self.path is not None
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            self._pid = os.getpid()
        return self._fd


def create_session(conn: Connection, data: JSONDict, heartbeat_timeout: float) -> bool:
    """Insert the session ``data["id"]``; False when it already existed (idempotent create).

    ``ON CONFLICT DO NOTHING`` rather than read-then-insert: two clients racing to create the
    same id must not turn into a primary-key error.
    """
    ts = data["timestamp"]
    state = deep_merge(data["state"], {"product": data["product"], "version": data["version"]})
    inserted = conn.execute(
        _insert_ignore(conn, sessions).returning(sessions.c.id),
        {
            "id": data["id"],
            "product": data["product"],
            "version": data["version"],
            "machine_id": data["machine_id"],
            "hostname": data["hostname"],
            "created_at": ts,
            "updated_at": ts,
            "hung": False,
            "state": dumps(state),
        },
    )
    if inserted.first() is None:  # (rowcount is not reliable here on every driver)
        return False
    if data["machine_id"]:
        _crash_abandoned(conn, data["machine_id"], heartbeat_timeout)
    _record_state(conn, data["id"], state, ts)
    return True


def _crash_abandoned(conn: Connection, machine_id: str, heartbeat_timeout: float) -> None:
    """The machine is back with a new session: its older suspended sessions died with it.
    "Suspended" by the server's clock, like every status (not by the create's timestamp)."""
    ts = now()
    stale_before = ts - heartbeat_timeout
    open_stale = (
        sa.select(sessions.c.id)
        .where(
            sessions.c.machine_id == machine_id,
            sessions.c.ended_at.is_(None),
            sessions.c.last_heartbeat < stale_before,
        )
        .order_by(sessions.c.id)
    )  # id order, like every multi-session lock (no deadlocks)
    for (sid,) in conn.execute(open_stale).all():
        crash(conn, sid, "machine came back without this session (it stopped heartbeating)", {}, ts)


def update_state(conn: Connection, session_id: str, update: JSONDict, ts: float) -> None:
    """Deep-merge ``update`` into the session's state under the write lock."""
    row = conn.execute(_locked(session_id, sessions.c.state)).first()
    if row is None:
        raise NotFound(session_id)
    state = deep_merge(json.loads(row.state), update)
    values = {"state": dumps(state), "updated_at": ts}
    conn.execute(sessions.update().where(sessions.c.id == session_id).values(values))
    _record_state(conn, session_id, update, ts)


def _record_state(conn: Connection, session_id: str, update: JSONDict, ts: float) -> None:
    """Append the update to the history and index every leaf it wrote."""
    row = {"session_id": session_id, "ts": ts, "body": dumps(update)}
    conn.execute(state_updates.insert(), row)
    keys = [{"key": value_key(p, v), "session_id": session_id} for p, v in leaves(update)]
    if keys:
        conn.execute(_insert_ignore(conn, state_values), keys)


def leaves(document: JSONDict, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted path, value) of every non-null leaf; arrays count as one leaf."""
    for key, value in document.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from leaves(value, path + ".")
        elif value is not None:
            yield path, value


def value_key(path: str, value: Any) -> str:
    """The indexed key of ``path = value``; integral floats equal their ints (3.0 == 3)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = path + "\0" + json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _insert_ignore(conn: Connection, table: sa.Table) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()


def event_row(
    session_id: str, event: JSONDict, op_id: str | None = None, data_text: str | None = None
) -> JSONDict:
    """The ``events`` row of a parsed event (``op_id``: of the batch operation that sent it;
    ``data_text``: ``dumps(event["data"])`` when the caller has it, see ``parse_event_text``)."""
    row = _row(session_id, event, op_id, data_text)
    row["name"], row["level"] = event["name"], event["level"]
    return row


def metric_row(session_id: str, metric: JSONDict, op_id: str | None = None) -> JSONDict:
    """The ``metrics`` row of a parsed metric (``op_id``: of the batch operation that sent it)."""
    row = _row(session_id, metric, op_id)
    row["name"], row["type"], row["value"] = metric["name"], metric["type"], metric["value"]
    return row


def _row(
    session_id: str, item: JSONDict, op_id: str | None, data_text: str | None = None
) -> JSONDict:
    """The common columns; the whole item (minus unset fields) is the JSON body."""
    body = {k: v for k, v in item.items() if v is not None}
    body.pop("timestamp", None)  # (cheaper than a second test of every key in the loop)
    if data_text is not None and next(reversed(body)) == "data":
        # The data's text spliced in as the last member, as the encoder would have written it:
        # the data, the bulk of an event, is encoded once (by its check) instead of twice.
        del body["data"]
        text = f'{dumps(body)[:-1]},"data":{data_text}}}' if body else f'{{"data":{data_text}}}'
    else:
        text = dumps(body)
    return {"session_id": session_id, "ts": item["timestamp"], "op_id": op_id, "body": text}


def is_special(event: JSONDict) -> bool:
    """Events that change the session's hung flag, so they are not plain appends."""
    return event["name"] in (HUNG_EVENT, RECOVERED_EVENT)


def add_events(conn: Connection, rows: list[JSONDict]) -> None:
    """Append event rows (``event_row``); an unknown session raises ``NotFound``."""
    _append(conn, events, rows)


def add_metrics(conn: Connection, rows: list[JSONDict]) -> None:
    """Append metric rows (``metric_row``); an unknown session raises ``NotFound``."""
    _append(conn, metrics, rows)


def _append(conn: Connection, table: sa.Table, rows: list[JSONDict]) -> None:
    try:
        insert_rows(conn, table, rows)
    except conn.dialect.loaded_dbapi.IntegrityError as exc:  # the session's foreign key
        raise NotFound(rows[0]["session_id"]) from exc


def insert_rows(
    conn: Connection, table: sa.Table, rows: list[JSONDict], skip_duplicates: bool = False
) -> int:
    """INSERT ``rows`` (all with the same keys) on the driver's cursor, SQL compiled once; the
    number of rows inserted. ``skip_duplicates``: a row whose unique key exists is left out
    (``ON CONFLICT DO NOTHING``) instead of raising.

    The hot path of the server: SQLAlchemy's generic execute costs more than the INSERT itself
    (about 70 us of ~150 us per request). The SQL is still SQLAlchemy Core's, per dialect.
    Errors are the driver's own (``conn.dialect.loaded_dbapi``), except that a value the
    database refuses (PostgreSQL text cannot hold NUL) is a ``ValidationError``.
    """
    if not rows:
        return 0
    sql, keys = _compiled_insert(conn.dialect, table, tuple(rows[0]), skip_duplicates)
    params = _positional(rows, keys)
    cursor = conn.connection.cursor()
    try:
        cursor.executemany(sql, params) if len(params) > 1 else cursor.execute(sql, params[0])
        inserted: int = cursor.rowcount  # summed over executemany by sqlite3 and psycopg 3
        return inserted
    except conn.dialect.loaded_dbapi.DataError as exc:
        raise ValidationError("invalid value", str(exc).splitlines()[0][:200]) from None
    finally:
        cursor.close()


def _positional(rows: list[JSONDict], keys: tuple[str, ...] | None) -> list[Any]:
    """Each row's values in the order of ``keys`` (None: named parameters, the rows as they are)."""
    if keys is None:
        return rows
    if len(keys) == 1:
        return [(row[keys[0]],) for row in rows]
    return list(map(operator.itemgetter(*keys), rows))  # a third of the cost of a comprehension


@functools.cache
def _compiled_insert(
    dialect: sa.Dialect, table: sa.Table, columns: tuple[str, ...], skip_duplicates: bool
) -> tuple[str, tuple[str, ...] | None]:
    """SQL text and, for positional paramstyles, the order of the parameters."""
    insert: Any = table.insert()
    if skip_duplicates:
        module = postgresql if dialect.name == "postgresql" else sqlite
        insert = module.insert(table).on_conflict_do_nothing()
    compiled = insert.compile(dialect=dialect, column_keys=list(columns))
    order = compiled.positiontup if compiled.positional else None
    return compiled.string, tuple(order) if order is not None else None


def add_event(conn: Connection, session_id: str, event: JSONDict) -> None:
    """One event; hang and recovery events also set or clear the session's hung flag."""
    add_events(conn, [event_row(session_id, event)])
    if is_special(event):
        # Only while the session is open: a late event must not rewrite how it ended.
        values = {"hung": event["name"] == HUNG_EVENT, "updated_at": event["timestamp"]}
        is_open = sa.and_(sessions.c.id == session_id, sessions.c.ended_at.is_(None))
        conn.execute(sessions.update().where(is_open).values(values))


def heartbeat(conn: Connection, session_id: str, ts: float, received: float | None = None) -> None:
    """Record a heartbeat; one after a hang logs ``application_recovered`` and clears it
    (while the session is open). Liveness is the server's clock: ``last_heartbeat`` is when
    the server got it (``received``, default now), never earlier than the last one; the
    client's ``ts`` dates the recovery event."""
    cols = (sessions.c.hung, sessions.c.ended_at, sessions.c.last_heartbeat)
    row = conn.execute(_locked(session_id, *cols)).first()
    if row is None:
        raise NotFound(session_id)
    if row.hung and row.ended_at is None:
        add_event(conn, session_id, _server_event(RECOVERED_EVENT, ts, "heartbeat after a hang"))
    seen = max(row.last_heartbeat or 0.0, now() if received is None else received)
    values = {"last_heartbeat": seen, "updated_at": ts}
    conn.execute(sessions.update().where(sessions.c.id == session_id).values(values))


def end(conn: Connection, session_id: str, ts: float) -> None:
    """End the session; ending an ended (or crashed) session changes nothing."""
    row = conn.execute(_locked(session_id, sessions.c.ended_at)).first()
    if row is None:
        raise NotFound(session_id)
    if row.ended_at is None:
        values = {"ended_at": ts, "updated_at": ts}
        conn.execute(sessions.update().where(sessions.c.id == session_id).values(values))


def crash(conn: Connection, session_id: str, reason: str, data: JSONDict, ts: float) -> None:
    """Mark the session crashed and log ``session_crashed_detected``; an ended one stays as is."""
    row = conn.execute(_locked(session_id, sessions.c.ended_at)).first()
    if row is None:
        raise NotFound(session_id)
    if row.ended_at is not None:
        return
    values = {"ended_at": ts, "crashed_at": ts, "crash_reason": reason, "updated_at": ts}
    conn.execute(sessions.update().where(sessions.c.id == session_id).values(values))
    event = _server_event(CRASH_EVENT, ts, reason, level="critical", data=data)
    add_events(conn, [event_row(session_id, event)])


def _locked(session_id: str, *columns: sa.Column[Any]) -> sa.Select[Any]:
    # FOR NO KEY UPDATE: it does not wait for (or deadlock with) the KEY SHARE lock an
    # event's foreign key takes on the session.
    return sa.select(*columns).where(sessions.c.id == session_id).with_for_update(key_share=True)


def _server_event(
    name: str, ts: float, message: str, level: str = "info", **extra: Any
) -> JSONDict:
    return {
        "name": name,
        "level": level,
        "timestamp": ts,
        "category": "datacat",
        "message": message,
        **extra,
    }
