"""``@datacat.track``, ``datacat.session()``, ``datacat.timer`` and the current session.

Owns the wrapt wrapper that times the real lifetime of the seven kinds of callable (functions,
methods, classmethods, staticmethods, coroutines, generators, async generators) and turns
exceptions into events recorded once per exception; the current session (a contextvar, so
asyncio tasks and copied contexts see it); and the process-wide default session, created lazily
from configuration the first time something needs it; and the folding of call durations into
one aggregate timer metric per flush interval (a ``datacat-track`` sweeper thread hands them to
the session). With no session anywhere a tracked call costs the wrapt proxy, one contextvar
lookup and a flag check. Nothing here raises into the host.
"""

from __future__ import annotations

import atexit
import inspect
import math
import os
import sys
import threading
import types
from bisect import bisect_right
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator, Mapping
from contextlib import AbstractContextManager, nullcontext, suppress
from contextvars import ContextVar, Token
from time import perf_counter, sleep
from typing import Any, Protocol, TypeVar, cast, overload

import wrapt

from datacat import otel
from datacat._internal import logger, may_start_thread, swallow
from datacat.batching import _rng as rng  # private: the app's seeded ``random`` stays its own
from datacat.config import resolve
from datacat.errors import ConfigurationError
from datacat.limits import DEFAULT_BUCKETS
from datacat.session import NoopSession, Session, create_session

F = TypeVar("F", bound=Callable[..., Any])
Wrapper = Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]

#: Attribute set on an exception object: ids of the sessions it was already recorded into.
RECORDED_ATTR = "_datacat_recorded"


class SessionLike(Protocol):
    """The part of ``datacat.Session`` this module uses."""

    @property
    def id(self) -> str: ...

    def observe(self, name: str, value: float, *, type: str = ..., tags: Any = ...) -> None: ...

    def log_exception(self, exc: BaseException | None = ..., *, data: Any = ...) -> None: ...

    def end(self) -> Any: ...

    def crash(self, reason: str, data: Any = ...) -> Any: ...


_current: ContextVar[SessionLike | None] = ContextVar("datacat_current_session", default=None)

# The default session: _UNRESOLVED until first use, then a session or None (no URL configured).
_UNRESOLVED: Any = object()
_default: Any = _UNRESOLVED
_default_lock = threading.Lock()


def current_session() -> SessionLike | None:
    """The session tracked calls record into here: the innermost ``with datacat.session()``,
    else the process-wide default session (created on first use when ``DATACAT_URL`` is set),
    else None."""
    return _session_for(None)


def set_default_session(session: SessionLike | None) -> None:
    """Make ``session`` the process-wide default (e.g. the one ``datacat run`` instruments with),
    instead of one created from configuration on first use; None turns the default off."""
    global _default
    with _default_lock:
        _default = session


def _session_for(explicit: SessionLike | None) -> SessionLike | None:
    if explicit is not None:
        return explicit
    session = _current.get()
    if session is None:
        session = _default if _default is not _UNRESOLVED else _create_default()
    return session


def _create_default() -> SessionLike | None:
    global _default
    with _default_lock:
        if _default is _UNRESOLVED:
            _default = _open_default()
    return cast("SessionLike | None", _default)


@swallow(default=None)
def _open_default() -> SessionLike | None:
    # Only an explicitly configured URL turns tracking on; the client's fallback URL does not.
    if not os.environ.get("DATACAT_URL") or resolve().disabled:
        return None
    return cast(SessionLike, create_session(product=_main_name()))


def _main_name() -> str | None:
    """The product a default session is named after when ``DATACAT_PRODUCT`` is unset: for
    ``python -m package`` the package (``sys.argv[0]`` is then ``.../__main__.py``), else None
    (the client's default: the script's name)."""
    if os.environ.get("DATACAT_PRODUCT"):
        return None
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None)
    return name.removesuffix(".__main__") if isinstance(name, str) and name else None


# -- recording ------------------------------------------------------------------------------


class _Spec:
    """What one decoration asked for, precomputed so the hot path only reads attributes."""

    __slots__ = (
        "error_folds", "error_tags", "exceptions", "name", "ok_folds", "ok_tags", "rate",
        "session", "span", "timing", "unsampled",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        session: SessionLike | None,
        tags: Mapping[str, str] | None,
        timing: bool,
        exceptions: bool,
        rate: float,
        span: bool = False,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ConfigurationError(f"sample_rate must be within [0, 1], not {rate!r}")
        base = {str(k): str(v) for k, v in (tags or {}).items()}
        if rate < 1.0:
            base["sample_rate"] = repr(rate)  # lets readers scale sampled counts back up
        self.name, self.session, self.timing, self.exceptions = name, session, timing, exceptions
        self.rate, self.span = rate, span
        self.unsampled = timing and rate >= 1.0  # every call timed: no sampling decision
        self.ok_tags = {**base, "outcome": "ok"}
        self.error_tags = {**base, "outcome": "error"}
        self.ok_folds: dict[SessionLike, _Fold | _Direct] = {}
        self.error_folds: dict[SessionLike, _Fold | _Direct] = {}

    def timed(self) -> bool:
        """Whether this call's timing is recorded (sampling decides per call)."""
        return self.timing and (self.rate >= 1.0 or rng.random() < self.rate)


def _observe(session: SessionLike | None, spec: _Spec, start: float | None, ok: bool) -> None:
    """Fold one timing into the (session, name, outcome) aggregate of this decoration."""
    if session is None or start is None:
        return
    seconds = perf_counter() - start
    try:
        fold = (spec.ok_folds if ok else spec.error_folds).get(session)
        if fold is None:
            fold = _new_fold(session, spec, ok)
        fold.add(seconds)
    except Exception:
        logger.debug("datacat: recording a timing failed", exc_info=True)


def _failed(
    session: SessionLike | None, spec: _Spec, exc: BaseException, start: float | None
) -> None:
    """Record a call that ended by ``exc``: an early close is a success, not an error."""
    closed_early = _closed_early(exc)
    _observe(session, spec, start, closed_early)
    if session is not None and spec.exceptions and isinstance(exc, Exception):
        record_exception(session, exc, function=spec.name)


def _closed_early(exc: BaseException) -> bool:
    """A generator closed or a task cancelled by its consumer: not a failure of the callee."""
    if isinstance(exc, GeneratorExit):
        return True
    aio = sys.modules.get("asyncio")  # no CancelledError can exist before asyncio is imported
    return aio is not None and isinstance(exc, aio.CancelledError)


def record_exception(
    session: SessionLike, exc: BaseException, *, function: str | None = None
) -> bool:
    """Log ``exc`` into ``session`` unless it was logged there already (it may pass through
    several tracked frames); the mark lives on the exception object. True if logged now."""
    try:
        seen = getattr(exc, RECORDED_ATTR, None)
        if isinstance(seen, set) and session.id in seen:
            return False
        _mark(exc, session.id, seen)
        session.log_exception(exc, data={"function": function} if function else None)
        return True
    except Exception:
        logger.debug("datacat: could not record an exception", exc_info=True)
        return False


def _mark(exc: BaseException, session_id: str, seen: Any) -> None:
    if isinstance(seen, set):
        seen.add(session_id)
        return
    # An exception that refuses attributes is still logged, maybe once per tracked frame.
    with suppress(Exception):
        setattr(exc, RECORDED_ATTR, {session_id})


# -- timings folded outside the caller's thread -----------------------------------------------
# Why not ``session.observe`` per call: the client folds observations one by one in its sender
# thread (~1.7 µs each), and under the GIL the caller pays for that. Here a call only appends
# its duration to a list; a sweeper thread folds the list in bulk (sort + bisect, in C) once per
# flush interval and hands each fold to the client as one metric (``Session.log_aggregate``).

_live: set[_Fold] = set()  # folds of sessions not known to have ended
_sweeping = False  # this process has its sweeper thread (a forked child has none at first)
_hooks_installed = False
_sweeper_lock = threading.Lock()
SWEEP_PERIOD = 0.1  # seconds between looks for folds whose interval is over
FOLD_EVERY = 4096  # durations a list may hold before its caller folds it inline


class _Fold:
    """Durations of one name and outcome in one session, folded into count, sum, min, max
    and bucket counts. ``add`` takes no lock: appends are atomic, and folding removes exactly
    the items it read, so appends racing with it are kept."""

    __slots__ = (
        "count", "counts", "durations", "high", "interval", "last", "lock", "low", "name",
        "owner", "session", "tags", "total",
    )  # fmt: skip

    def __init__(self, session: Session, name: str, tags: dict[str, str], owner: Any) -> None:
        self.session, self.name, self.tags, self.owner = session, name, tags, owner
        self.interval, self.last = session.config.flush_interval, perf_counter()
        self.durations: list[float] = []
        self.lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self.count, self.total, self.low, self.high = 0, 0.0, math.inf, -math.inf
        self.counts = [0] * (len(DEFAULT_BUCKETS) + 1)

    def add(self, seconds: float) -> None:
        durations = self.durations
        durations.append(seconds)
        if not _sweeping:  # a forked child's first timing of a fold made by its parent
            _start_sweeper()
        if len(durations) >= FOLD_EVERY:  # no sweeper (shutdown): bound the memory
            self.fold()

    def fold(self) -> None:
        """Move the appended durations into the aggregate."""
        with self.lock:
            taken = len(self.durations)
            chunk = sorted(self.durations[:taken])
            del self.durations[:taken]
            if not chunk:
                return
            self.count += taken
            self.total += sum(chunk)
            self.low, self.high = min(self.low, chunk[0]), max(self.high, chunk[-1])
            below = 0
            for index, bound in enumerate(DEFAULT_BUCKETS):
                upto = bisect_right(chunk, bound)
                self.counts[index] += upto - below
                below = upto
            self.counts[-1] += taken - below

    def flush(self) -> None:
        """Hand what was folded to the client as one timer metric."""
        self.fold()
        with self.lock:
            if not self.count:
                return
            total, count, low, high, counts = (
                self.total, self.count, self.low, self.high, self.counts
            )  # fmt: skip
            self._clear()
        try:
            self.session.log_aggregate(
                self.name, total, count=count, min=low, max=high, tags=self.tags,
                buckets=DEFAULT_BUCKETS, bucket_counts=counts,
            )  # fmt: skip
        except Exception:
            logger.debug("datacat: handing timings over failed", exc_info=True)

    def release(self) -> None:
        """Flush and forget: the session ended."""
        self.flush()
        _live.discard(self)
        self.owner.pop(self.session, None)


class _Direct:
    """For a session that is not a ``datacat.Session`` (e.g. disabled): plain ``observe``."""

    __slots__ = ("name", "session", "tags")

    def __init__(self, session: SessionLike, name: str, tags: dict[str, str]) -> None:
        self.session, self.name, self.tags = session, name, tags

    def add(self, seconds: float) -> None:
        try:
            self.session.observe(self.name, seconds, type="timer", tags=self.tags)
        except Exception:
            logger.debug("datacat: observe failed", exc_info=True)


def _new_fold(session: SessionLike, spec: _Spec, ok: bool) -> _Fold | _Direct:
    tags, owner = (spec.ok_tags, spec.ok_folds) if ok else (spec.error_tags, spec.error_folds)
    if not isinstance(session, Session) or isinstance(session, NoopSession):
        fold: _Fold | _Direct = _Direct(session, spec.name, tags)  # disabled: no thread
    else:
        fold = _Fold(session, spec.name, tags, owner)
        _live.add(fold)
        if not _sweeping:
            _start_sweeper()
    owner[session] = fold
    return fold


def _start_sweeper() -> None:
    """One daemon thread per process hands folds over once per flush interval."""
    global _sweeping, _hooks_installed
    with _sweeper_lock:
        if _sweeping:
            return
        if not _hooks_installed:
            _hooks_installed = True
            atexit.register(flush_timings)  # runs before the client's exit flush (LIFO)
            os.register_at_fork(after_in_child=_forget_in_child)
        if may_start_thread():
            _sweeping = True
            threading.Thread(target=_sweep_forever, name="datacat-track", daemon=True).start()


def _sweep_forever() -> None:
    while True:
        sleep(SWEEP_PERIOD)
        try:
            _sweep(perf_counter())
        except Exception:
            logger.debug("datacat: sweeping timings failed", exc_info=True)


def _sweep(now: float) -> None:
    for fold in list(_live):
        if now - fold.last >= fold.interval:
            fold.last = now
            if fold.session.ended:
                fold.release()
            else:
                fold.flush()


def flush_timings(session: SessionLike | None = None) -> None:
    """Hand every folded timing (of ``session``, or of all sessions) to the client now;
    ``session``'s folds are then forgotten (it is about to end), as are those of ended ones."""
    for fold in list(_live):
        if session is None and not fold.session.ended:
            fold.flush()
        elif session is None or fold.session is session:
            fold.release()


def _forget_in_child() -> None:
    """After fork the parent's folded timings are the parent's to send. The sweeper thread did
    not survive the fork: the child's next timing starts one (``_Fold.add``)."""
    global _sweeping
    _sweeping = False
    for fold in list(_live):
        fold.lock = threading.Lock()
        fold.durations.clear()
        fold._clear()


def _fresh_locks_in_child() -> None:
    """A lock a thread of the parent held at fork time would stay held in the child forever."""
    global _default_lock, _sweeper_lock
    _default_lock, _sweeper_lock = threading.Lock(), threading.Lock()


os.register_at_fork(after_in_child=_fresh_locks_in_child)


# -- one wrapper per kind of callable --------------------------------------------------------


def _sync_wrapper(spec: _Spec) -> Wrapper:
    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        session = spec.session
        if session is None:
            session = _current.get()
            if session is None:
                session = _default if _default is not _UNRESOLVED else _create_default()
                if session is None:
                    return wrapped(*args, **kwargs)
        start = perf_counter() if spec.unsampled or spec.timed() else None
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            _failed(session, spec, exc, start)
            raise
        _observe(session, spec, start, True)
        return result

    return wrapper


def _span_wrapper(spec: _Spec, inner: Wrapper) -> Wrapper:
    """A sync wrapper inside an OpenTelemetry span named like the metric (current while the
    call runs, so its exception event carries the span's ids)."""

    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with otel.span(spec.name):
            return inner(wrapped, instance, args, kwargs)

    return wrapper


def _lazy_wrapper(spec: _Spec, trace: Callable[..., Any]) -> Wrapper:
    """Wrapper for kinds whose body runs later (coroutine, generator, async generator): the call
    creates the object as usual, ``trace`` wraps it so the timer covers its whole run."""

    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        made = wrapped(*args, **kwargs)
        session = _session_for(spec.session)
        if session is None and not spec.span:
            return made
        return trace(made, session, spec, spec.timed())

    return wrapper


def _span(spec: _Spec, current: bool) -> AbstractContextManager[Any]:
    return otel.span(spec.name, current=current) if spec.span else nullcontext()


async def _trace_coroutine(
    coro: Coroutine[Any, Any, Any], session: SessionLike | None, spec: _Spec, timed: bool
) -> Any:
    start = perf_counter() if timed else None
    with _span(spec, current=True):
        try:
            result = await coro
        except BaseException as exc:
            _failed(session, spec, exc, start)
            raise
    _observe(session, spec, start, True)
    return result


def _trace_generator(
    gen: Generator[Any, Any, Any], session: SessionLike | None, spec: _Spec, timed: bool
) -> Generator[Any, Any, Any]:
    # The span is not made current: each yield would leak it into the consumer's context.
    start = perf_counter() if timed else None
    with _span(spec, current=False):
        try:
            result = yield from gen  # passes send(), throw() and close() through
        except BaseException as exc:
            _failed(session, spec, exc, start)
            raise
    _observe(session, spec, start, True)
    return result


async def _trace_async_generator(
    agen: AsyncGenerator[Any, Any], session: SessionLike | None, spec: _Spec, timed: bool
) -> AsyncGenerator[Any, Any]:
    """``yield from`` for async generators, timed: passes ``asend``/``athrow``/``aclose`` on."""
    start = perf_counter() if timed else None
    with _span(spec, current=False):
        try:
            step = agen.asend(None)
            while True:
                try:
                    value = await step
                except StopAsyncIteration:
                    break
                try:
                    sent = yield value
                except GeneratorExit:
                    await agen.aclose()
                    raise
                except BaseException as exc:
                    step = agen.athrow(exc)
                else:
                    step = agen.asend(sent)
        except BaseException as exc:
            _failed(session, spec, exc, start)
            raise
    _observe(session, spec, start, True)


# -- the wrapt proxies -----------------------------------------------------------------------


class _BoundTracked(wrapt.BoundFunctionWrapper):
    """A tracked function bound to an instance or a class; pickles like a bound method."""

    def __reduce_ex__(self, protocol: Any) -> Any:
        owner = self._self_instance if self._self_instance is not None else self._self_owner
        return getattr, (owner, self.__name__)


class _Unbound:
    """Stands in for "no instance" on a tracked plain function (see ``_Tracked``)."""

    __slots__ = ()


_UNBOUND = _Unbound()


class _Tracked(wrapt.FunctionWrapper):
    """The object ``@track`` returns: keeps name, signature, docstring and kind of the wrapped
    callable, binds like it, and pickles by reference like it."""

    __bound_function_wrapper__ = _BoundTracked

    def __init__(self, wrapped: Any, wrapper: Wrapper, enabled: Callable[[], bool] | None) -> None:
        if type(wrapped) is types.FunctionType:
            # Why: on each unbound call wrapt probes ``wrapped.__self__`` when its instance is
            # None; for a plain function that raises and clears an AttributeError (~0.4 µs,
            # most of the proxy's cost). A non-None instance skips the probe; binding to an
            # instance or class is unaffected (wrapt passes the real one to bound wrappers).
            super(wrapt.FunctionWrapper, self).__init__(  # type: ignore[call-arg]
                wrapped, _UNBOUND, wrapper, enabled, "function"
            )
        else:
            super().__init__(wrapped, wrapper, enabled)

    def __reduce_ex__(self, protocol: Any) -> Any:
        return self.__qualname__  # pickle resolves it in __module__ and checks identity


def _tracking_on() -> bool:
    """wrapt's ``enabled`` hook of decorations without ``session=`` or spans: when it answers
    False (no session anywhere) wrapt calls the function directly, skipping the wrapper."""
    if _current.get() is not None:
        return True
    return (_default if _default is not _UNRESOLVED else _create_default()) is not None


def _kind_wrapper(wrapped: Any, spec: _Spec) -> Wrapper:
    func = getattr(wrapped, "__func__", wrapped)  # classmethod, staticmethod, bound method
    if inspect.isasyncgenfunction(func):
        return _lazy_wrapper(spec, _trace_async_generator)
    if inspect.iscoroutinefunction(func):
        return _lazy_wrapper(spec, _trace_coroutine)
    if inspect.isgeneratorfunction(func):
        return _lazy_wrapper(spec, _trace_generator)
    inner = _sync_wrapper(spec)
    return _span_wrapper(spec, inner) if spec.span else inner


def _metric_name(wrapped: Any) -> str:
    func = getattr(wrapped, "__func__", wrapped)
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
    module = getattr(func, "__module__", None)
    return f"{module}.{qualname}" if module else str(qualname)


@overload
def track(name: F, /) -> F: ...


@overload
def track(
    name: str | None = None,
    *,
    session: SessionLike | None = None,
    tags: Mapping[str, str] | None = None,
    record_timing: bool = True,
    record_exceptions: bool = True,
    sample_rate: float = 1.0,
    span: bool | None = None,
) -> Callable[[F], F]: ...


def track(
    name: Any = None,
    *,
    session: SessionLike | None = None,
    tags: Mapping[str, str] | None = None,
    record_timing: bool = True,
    record_exceptions: bool = True,
    sample_rate: float = 1.0,
    span: bool | None = None,
) -> Any:
    """Decorator: time each call as the timer metric ``name`` (default ``module.qualname``,
    tagged ``outcome=ok|error``) and log each exception once as an error event, into
    ``session`` if given, else the current session, else the default session. Use it bare
    (``@track``) or with options; on a classmethod it goes outside ``@classmethod``.
    ``span=True`` (default: ``DATACAT_OTEL_SPANS``) also opens an OpenTelemetry span named
    like the metric when the application has an SDK tracer provider."""
    if name is not None and not isinstance(name, str):  # bare @track (a classmethod object
        return track()(name)  # is not callable, so callable() cannot tell)

    def decorate(func: F) -> F:
        spec = _Spec(
            name or _metric_name(func),
            session,
            tags,
            record_timing,
            record_exceptions,
            sample_rate,
            otel.spans_requested() if span is None else span,
        )
        enabled = _tracking_on if spec.session is None and not spec.span else None
        return cast(F, _Tracked(func, _kind_wrapper(func, spec), enabled))

    return decorate


# -- datacat.session() and datacat.timer() ---------------------------------------------------


class SessionScope:
    """``with datacat.session(...) as s:`` / ``async with``: a new session, current inside the
    block, ended on normal exit, crashed when an exception escapes (which then propagates)."""

    def __init__(
        self,
        url: str | None,
        product: str | None,
        version: str | None,
        state: Mapping[str, Any] | None,
        options: dict[str, Any],
    ) -> None:
        self._args = dict(options, url=url, product=product, version=version, state=state)

    def __enter__(self) -> Session:
        session = create_session(**self._args)
        _push(self, (session, _current.set(session)))
        return session

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        opened = _pop(self)
        if opened is not None:
            _restore(opened[1])
            flush_timings(opened[0])
            _close(opened[0], exc)

    async def __aenter__(self) -> Session:
        return self.__enter__()

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        opened = _pop(self)
        if opened is None:
            return
        session, token = opened
        _restore(token)
        flush_timings(session)
        import asyncio  # loaded already when running under it

        try:
            asyncio.get_running_loop()
        except RuntimeError:  # another event loop library: end inline
            _close(session, exc)
            return
        # Why a thread: ending flushes with a deadline, which must not stall the event loop.
        await asyncio.to_thread(_close, session, exc)


def session(
    url: str | None = None,
    product: str | None = None,
    version: str | None = None,
    state: Mapping[str, Any] | None = None,
    **options: Any,
) -> SessionScope:
    """A context manager (sync and async) running its block in a new session; ``options`` are
    those of ``datacat.create_session``."""
    return SessionScope(url, product, version, state, options)


# What open blocks need at their exit, per context: one scope or timer object may be entered
# by several asyncio tasks or threads at once, and each exit must find its own entry.
_blocks: ContextVar[tuple[tuple[object, Any], ...]] = ContextVar("datacat_blocks", default=())


def _push(owner: object, state: Any) -> None:
    _blocks.set((*_blocks.get(), (owner, state)))


def _pop(owner: object) -> Any:
    """The state ``owner`` pushed last in this context (None if it pushed none here)."""
    blocks = _blocks.get()
    for index in range(len(blocks) - 1, -1, -1):
        if blocks[index][0] is owner:
            _blocks.set(blocks[:index] + blocks[index + 1 :])
            return blocks[index][1]
    return None


def _restore(token: Token[SessionLike | None]) -> None:
    try:
        _current.reset(token)
    except ValueError:  # exited in another context than entered: restore by hand
        _current.set(token.old_value if token.old_value is not Token.MISSING else None)


def _close(session: SessionLike, exc: BaseException | None) -> None:
    try:
        if exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None)):
            session.end()
            return
        record_exception(session, exc)
        session.crash(f"{type(exc).__name__}: {exc}"[:500])
    except Exception:
        logger.debug("datacat: could not close a session", exc_info=True)


class Timer:
    """``with datacat.timer(name):`` records one timing of its block into the current session;
    ``@datacat.timer(name)`` times each call of a function the same way."""

    def __init__(self, name: str, tags: Mapping[str, str] | None = None) -> None:
        self.name = name
        self._tags = {str(k): str(v) for k, v in (tags or {}).items()}

    def __enter__(self) -> Timer:
        _push(self, (_session_for(None), perf_counter()))
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        session, start = _pop(self) or (None, 0.0)
        if session is not None:
            tags = {**self._tags, "outcome": "ok" if exc is None else "error"}
            _Direct(session, self.name, tags).add(perf_counter() - start)

    async def __aenter__(self) -> Timer:
        return self.__enter__()

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(kind, exc, tb)

    def __call__(self, func: F) -> F:
        return track(self.name, tags=self._tags, record_exceptions=False)(func)


def timer(name: str, *, tags: Mapping[str, str] | None = None) -> Timer:
    """Time a block or a function into the current session as the timer metric ``name``."""
    return Timer(name, tags)
