"""Wrapping an async generator function so a context spans each generator's whole life.

``yield from`` has no async form, so a wrapper that times (or traces) an async generator must
pass ``asend``/``athrow``/``aclose`` on by hand; a naive ``async for`` wrapper drops values sent
in and exceptions thrown in. This module is wrapt-free so that ``datacat.session`` (which must not
import wrapt) can use it as well as ``datacat.track``.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def wrap_async_generator_function(func: F, around: Callable[[], AbstractContextManager[Any]]) -> F:
    """``func`` (an async generator function) with each generator it makes run inside
    ``around()``, entered at the first step and left when the generator finishes, raises or
    is closed. The wrapper is itself an async generator function (``inspect`` says so)."""

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        with around():
            agen = func(*args, **kwargs)
            step = agen.asend(None)
            while True:
                try:
                    value = await step
                except StopAsyncIteration:
                    return
                try:
                    sent = yield value
                except GeneratorExit:
                    await agen.aclose()
                    raise
                except BaseException as exc:  # athrow(): the inner generator may handle it
                    step = agen.athrow(exc)
                else:
                    step = agen.asend(sent)

    return wrapper  # type: ignore[return-value]
