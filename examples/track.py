"""``@datacat.track`` and ``datacat.session()``: sync, async and generator examples.

Start a server (``make run``), then run this script; it prints what reached the server:

    .venv/bin/python examples/track.py                      # server at http://127.0.0.1:9090
    DATACAT_URL=http://127.0.0.1:9999 .venv/bin/python examples/track.py

Without a server it still runs to the end (DataCat never breaks its host) and says so.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator

import datacat


@datacat.track
def load(count: int) -> list[int]:
    """Timed as the metric ``__main__.load``."""
    time.sleep(0.01)
    return list(range(count))


class Store:
    @datacat.track
    @classmethod
    def open(cls) -> Store:  # on a classmethod, @track goes outside @classmethod
        return cls()

    @datacat.track("store.save", tags={"backend": "memory"})
    def save(self, rows: list[int]) -> None:
        time.sleep(0.002 * len(rows))


@datacat.track
def batches(rows: list[int], size: int) -> Iterator[list[int]]:
    """A generator: timed from its first step to its end, not just its creation."""
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


@datacat.track
async def fetch(item: int) -> int:
    """A coroutine: timed while it runs; item 3 fails and becomes an exception event."""
    await asyncio.sleep(0.01)
    if item == 3:
        raise LookupError(f"item {item} is missing")
    return item * 10


@datacat.track
async def ticks(count: int) -> AsyncIterator[int]:
    """An async generator; the consumer below stops early, which is not an error."""
    for tick in range(count):
        await asyncio.sleep(0.005)
        yield tick


async def run_async() -> None:
    results = await asyncio.gather(*(fetch(i) for i in range(5)), return_exceptions=True)
    print("fetched:", results)
    async for tick in ticks(10):
        if tick == 2:
            break


def main() -> None:
    url = os.environ.get("DATACAT_URL", "http://127.0.0.1:9090")
    options = {"exit_timeout": 2.0, "timeout": 1.0}
    with datacat.session(url, product="example-track", version="1.0", **options) as session:
        store = Store.open()
        for batch in batches(load(6), size=2):
            store.save(batch)
        with datacat.timer("example.async_part"):
            asyncio.run(run_async())
    report(session)
    try:
        with datacat.session(url, product="example-track", version="1.0", **options) as failed:
            load(1)
            raise RuntimeError("the block failed")  # logged, session crashed, then re-raised
    except RuntimeError:
        print("second session crashed:", failed.get_details().get("crash_reason", "(no server)"))


def report(session: datacat.Session) -> None:
    details = session.get_details()
    if not details:
        print(f"no server answered at {session.url}: start one with `make run`")
        return
    print(f"session {session.id}: {details['status']}")
    for metric in details["metrics"]:
        outcome = metric.get("tags", {}).get("outcome")
        print(
            f"  timer {metric['name']:<24} x{metric['count']} {metric['value']:.3f} s ({outcome})"
        )
    for event in details["events"]:
        kind, text = event.get("exception_type"), event.get("exception_msg", "")
        print(f"  event {event['name']}: {kind}: {text}")


if __name__ == "__main__":
    main()
