"""Client internals that keep instrumentation from hurting the host.

Owns: the ``datacat`` logger, log-once reporting of internal errors, the JSON-safe conversion of
user values (repr for the unknown, truncation of oversized strings, NUL characters and lone
surrogates replaced: the server refuses them, PostgreSQL cannot store NUL, UTF-8 cannot encode a
surrogate), the repair of event text fields
(``text_field``, ``name_field``) the server would refuse, the process-wide
"interpreter is shutting down" flag that forbids starting threads, and the fork repair of imports
DataCat's own threads had in progress (``free_orphaned_imports``). ``logging`` is imported on the
first log call (``logger``): the process sender's child, which seldom logs, starts faster.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import threading
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from datacat.limits import MAX_NAME

if TYPE_CHECKING:
    import logging

#: ``logging``'s levels (the module itself is imported on first use: ``logger``)
WARNING, ERROR = 30, 40


class _Logger:
    """``logging.getLogger(name)``, looked up when a log call is made. Each attribute is the
    real logger's (``logger.debug`` its bound method, so the caller's frame is the one logged);
    nothing imports ``logging`` until something is logged, and no logger exists before. That
    matters in a test run: pytest's log capture walks every logger there is, six times per test
    (three of ours cost a 2,000-test run ~15 M instructions)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, name: str) -> Any:
        import logging

        return getattr(logging.getLogger(self._name), name)


def lazy_logger(name: str) -> logging.Logger:
    """The logger ``name``, made when something is first logged (see ``_Logger``)."""
    return cast("logging.Logger", _Logger(name))


logger = lazy_logger("datacat")

#: Strings longer than this are cut and marked, so one huge value cannot bloat a batch.
MAX_STRING = 16 * 1024
TRUNCATED = "…[truncated {} chars]"
#: What a NUL character in a user's string becomes (the server refuses NUL).
NUL_REPLACEMENT = "\ufffd"
#: The end of a name cut to ``limits.MAX_NAME``.
NAME_CUT = "…"
_MAX_DEPTH = 32
_PLAIN = frozenset({int, bool, type(None)})

_seen: set[str] = set()
_seen_lock = threading.Lock()
_shutting_down = False
#: Names of DataCat's own threads start with this (sender, heartbeat, watchdog, ...).
THREAD_PREFIX = "datacat-"
_ours_at_fork: frozenset[int] = frozenset()

P = ParamSpec("P")
R = TypeVar("R")


def log_once(key: str, message: str, *args: Any, level: int = WARNING) -> None:
    """Log ``message`` the first time ``key`` is seen in this process; later calls are silent."""
    with _seen_lock:
        if key in _seen:
            return
        _seen.add(key)
    logger.log(level, message, *args)


def swallow(default: Any = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: an internal error is logged once (per function) and ``default`` returned."""

    def wrap(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return func(*args, **kwargs)
            except Exception:
                log_once(
                    f"internal:{func.__qualname__}",
                    "datacat: internal error in %s",
                    func.__qualname__,
                    level=ERROR,
                )
                logger.debug("datacat internal error", exc_info=True)
                return default

        return guarded

    return wrap


def _note_threads_before_fork() -> None:
    """In the forking thread, just before ``fork``: which threads are DataCat's."""
    global _ours_at_fork
    _ours_at_fork = frozenset(
        t.ident for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX) and t.ident
    )


def _reset_after_fork() -> None:
    """In a forked child: a lock another thread held at fork time would never be released."""
    global _seen_lock
    _seen_lock = threading.Lock()
    free_orphaned_imports(_ours_at_fork)


def free_orphaned_imports(thread_ids: Collection[int]) -> list[str]:
    """In a forked child, undo the imports ``thread_ids`` (threads that do not exist here) had in
    progress at fork time; the names of the modules freed.

    A thread of ours may be importing lazily when the app forks (``requests`` imports ``netrc``
    on its first request). Its per-module import lock is then held forever in the child and the
    child's next import of that module hangs (a forked child's first flush failed 1 time in 5).
    The lock is forgotten and a half-initialised module dropped, exactly as after a failed
    import, so the next import starts afresh. Only our own threads' imports are touched."""
    try:
        from importlib import _bootstrap  # CPython's import machinery (private, checked)

        locks = getattr(_bootstrap, "_module_locks")  # noqa: B009 (private: not in typeshed)
        blocking = getattr(_bootstrap, "_blocking_on")  # noqa: B009
        freed = [name for name, ref in list(locks.items()) if _owner(ref()) in thread_ids]
        for name in freed:
            del locks[name]
            spec = getattr(sys.modules.get(name), "__spec__", None)
            if getattr(spec, "_initializing", False):
                del sys.modules[name]
        for ident in thread_ids:
            blocking.pop(ident, None)
        return freed
    except Exception:  # another interpreter's internals: leave them alone
        logger.debug("datacat: cannot repair imports after fork", exc_info=True)
        return []


def _owner(lock: Any) -> Any:
    return getattr(lock, "owner", None)


os.register_at_fork(before=_note_threads_before_fork, after_in_child=_reset_after_fork)


class Record:
    """A small result type: its ``__slots__`` are its fields, shown by ``repr`` and compared by
    ``==``. What ``@dataclass`` would make, without importing ``dataclasses`` (and ``inspect``
    with it: ~10 ms the process sender's child would pay at each start)."""

    __slots__: tuple[str, ...] = ()
    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()


def mark_shutting_down() -> None:
    """Called by the exit hook: from now on no thread may be started."""
    global _shutting_down
    _shutting_down = True


def may_start_thread() -> bool:
    """False during interpreter shutdown (Python 3.12+ refuses new threads then)."""
    return not _shutting_down and not sys.is_finalizing()


def jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as strict JSON data: unknown objects become ``repr``, long strings are cut,
    non-finite floats become strings, and very deep nesting is cut off."""
    if _plain(value):
        return value  # the common case first: this runs for every value the sender sends
    kind = type(value)
    if kind is dict and depth < _MAX_DEPTH:
        return {
            k if type(k) is str and k.isascii() and "\x00" not in k else _key(k): _leaf(v, depth)
            for k, v in value.items()
        }
    if kind is list and depth < _MAX_DEPTH:
        return [_leaf(v, depth) for v in value]
    return _unusual(value, depth)


def _leaf(value: Any, depth: int) -> Any:
    return value if _plain(value) else jsonable(value, depth + 1)


def _plain(value: Any) -> bool:
    """Already strict JSON as it is: None, bool, int, finite float, a string not too long."""
    kind = type(value)
    if kind is str:
        return (
            len(value) <= MAX_STRING
            and "\x00" not in value
            and (value.isascii() or not has_surrogate(value))
        )
    return kind in _PLAIN or (kind is float and math.isfinite(value))


def _unusual(value: Any, depth: int) -> Any:
    """Subclasses of the JSON types, floats, and everything else."""
    if isinstance(value, int):  # an int subclass such as IntEnum (None and bool are plain)
        return int(value)
    if isinstance(value, str):
        return truncate(clean_text(str(value)))
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else repr(value)
    if depth >= _MAX_DEPTH:
        return truncate(clean_text(_safe_repr(value)))
    if isinstance(value, dict):
        return {_key(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v, depth + 1) for v in value]
    # a date or time exists only once ``datetime`` is imported: none is imported for this
    dates = sys.modules.get("datetime")
    if dates is not None and isinstance(value, dates.date | dates.time):
        return value.isoformat()
    return truncate(clean_text(_safe_repr(value)))


def truncate(text: str, limit: int = MAX_STRING) -> str:
    """``text`` cut to ``limit`` characters with a marker saying how much was cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + TRUNCATED.format(len(text) - limit)


def clean_text(text: str) -> str:
    """``text`` with NUL characters and lone surrogates (``"\\ud800"``, or what
    ``surrogateescape`` made of undecodable bytes) replaced by U+FFFD: the server refuses both,
    and UTF-8 cannot encode a surrogate. A well-formed surrogate pair becomes its character."""
    if "\x00" in text:
        text = text.replace("\x00", NUL_REPLACEMENT)
    if not text.isascii() and has_surrogate(text):
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def has_surrogate(text: str) -> bool:
    """``text`` holds a surrogate code point (which UTF-8 cannot encode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def text_field(value: Any, limit: int = MAX_STRING) -> str:
    """A text field of an event (``message``, ``category``, ...) as the server takes it: a
    string (``str()`` of anything else), without NUL or lone surrogates, cut to ``limit``."""
    if type(value) is str and value.isascii() and len(value) <= limit and "\x00" not in value:
        return value  # nearly always (several per event): no further call
    text = value if type(value) is str else _safe_str(value)
    return truncate(clean_text(text), limit)


def name_field(value: Any) -> str:
    """An event or metric name as the server takes it: ``text_field``, cut to
    ``limits.MAX_NAME`` characters ending in ``NAME_CUT``."""
    if type(value) is str and value.isascii() and len(value) <= MAX_NAME and "\x00" not in value:
        return value  # nearly always: no further call
    text = text_field(value)
    if len(text) <= MAX_NAME:
        return text
    return text[: MAX_NAME - len(NAME_CUT)] + NAME_CUT


def snapshot(value: Any) -> Any:
    """A copy of nested dicts and lists, so later mutation by the caller cannot change what
    was logged; leaves are shared (they are converted later, off the caller's thread)."""
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, list):
        return [snapshot(v) for v in value]
    return value


def _key(key: Any) -> str:
    if type(key) is str and "\x00" not in key and (key.isascii() or not has_surrogate(key)):
        return key  # nearly always
    return truncate(clean_text(key if isinstance(key, str) else _safe_str(key)))


def _safe_str(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return _safe_repr(value)


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"
