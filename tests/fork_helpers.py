"""Test helpers of the fork-safety tests: run a script in a fresh interpreter (forks happen
there, not in the test process), and is a lock that a thread held at fork time usable in the
child? (A lock copied into a child stays held forever: its owner thread does not exist there.)"""

from __future__ import annotations

import os
import subprocess
import sys

_SCRIPT = """
import os, sys, threading
{setup}
lock = lambda: {lock}
held, release = threading.Event(), threading.Event()
parents = lock()

def hold():
    with parents:
        held.set()
        release.wait()

threading.Thread(target=hold, daemon=True).start()
assert held.wait(10)
pid = os.fork()
if pid == 0:
    os._exit(0 if lock().acquire(timeout=2) else 1)
release.set()
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def run_script(script: str, *args: str, **env: str) -> str:
    """Run ``script`` with ``args`` and no inherited ``DATACAT_*`` settings (``env`` added);
    its output, after asserting it succeeded."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DATACAT_")}
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def lock_free_in_forked_child(setup: str, lock: str) -> bool:
    """Run ``setup``, hold the lock ``lock`` (an expression) in a thread while forking; whether
    the child can take it."""
    return run_script(_SCRIPT.format(setup=setup, lock=lock)).strip() == "0"
