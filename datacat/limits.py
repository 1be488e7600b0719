"""The wire's limits and well-known names: the constants client and server both use.

Part of the pure core (no imports beyond the standard library, no I/O). It is its own module so
the client can use them without importing the model's parsers (``datacat.model`` re-exports
them): an instrumented program's start pays ~3 ms less.
"""

from __future__ import annotations

#: Upper bounds in seconds of the default histogram buckets; an overflow bucket follows.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)

MAX_NAME = 200
#: The last second of year 9999: later timestamps cannot be written back as ISO 8601.
MAX_TIMESTAMP = 253_402_300_799
MAX_BATCH_OPERATIONS = 10_000
#: The levels of an event.
LEVELS = ("debug", "info", "warning", "error", "critical")
#: How deeply free-form JSON (``state``, ``data``, ``metadata``) may nest: deeper documents
#: cannot be read back or merged without running into Python's recursion limit.
MAX_DEPTH = 64

HUNG_EVENT = "application_appears_hung"
RECOVERED_EVENT = "application_recovered"
CRASH_EVENT = "session_crashed_detected"
#: The crash reason a watcher process (local daemon, process sender) gives a session whose
#: program ended without ending it.
PARENT_TERMINATED = "parent_process_terminated"
