"""``datacat._asyncgen``: a context around an async generator's whole life, and
``session.timer`` on async generator functions (against the real server)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from pathlib import Path

from client_helpers import FAST, details

import datacat
from datacat._asyncgen import wrap_async_generator_function


async def echo() -> AsyncGenerator[str, str]:
    """Yields back what it is sent; a thrown ValueError is answered with "handled"."""
    received = "start"
    while received != "stop":
        try:
            received = yield received
        except ValueError:
            received = yield "handled"


def test_the_context_spans_the_generator_and_send_throw_close_pass_through() -> None:
    log: list[str] = []

    @contextmanager
    def around() -> Iterator[None]:
        log.append("enter")
        try:
            yield
        finally:
            log.append("exit")

    wrapped = wrap_async_generator_function(echo, around)

    async def drive() -> list[str]:
        agen = wrapped()
        got = [await agen.__anext__(), await agen.asend("a"), await agen.athrow(ValueError())]
        assert log == ["enter"]  # still inside while the generator is suspended
        await agen.aclose()
        return got

    assert inspect.isasyncgenfunction(wrapped) and wrapped.__name__ == "echo"
    assert asyncio.run(drive()) == ["start", "a", "handled"]
    assert log == ["enter", "exit"]


def test_session_timer_times_an_async_generator_to_its_end(server_url: str, tmp_path: Path) -> None:
    session = datacat.create_session(
        server_url, product="asyncgen-test", spool_dir=str(tmp_path / "spool"), **FAST
    )

    @session.timer("agen")
    async def ticks() -> AsyncGenerator[int, None]:
        for tick in range(2):
            await asyncio.sleep(0.05)
            yield tick

    async def collect() -> list[int]:
        return [tick async for tick in ticks()]

    assert inspect.isasyncgenfunction(ticks)
    assert asyncio.run(collect()) == [0, 1]
    assert session.flush(10)
    (metric,) = [m for m in details(server_url, session.id)["metrics"] if m["name"] == "agen"]
    assert metric["value"] >= 0.09  # both sleeps, not the ~0 s of making the generator
    session.end()
