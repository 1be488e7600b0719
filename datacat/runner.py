"""``datacat run``: run an unmodified Python program instrumented.

The command is executed in place of ``datacat`` itself (``exec``), so its exit code, signals,
stdin, stdout and stderr are exactly its own. Instrumentation reaches it through
``datacat/_bootstrap/sitecustomize.py``, put first on ``PYTHONPATH``; the options travel as
``DATACAT_*`` environment variables, which ``datacat.config`` reads. ``bootstrap()`` is what that
``sitecustomize`` calls inside the program: one session for the run with background heartbeats,
every instrumentor on. The client's exit hook ends the session; the excepthook instrumentor marks
it crashed first when the program dies of an uncaught exception.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BOOTSTRAP_DIR = str(Path(__file__).resolve().parent / "_bootstrap")
#: Set for the program (and inherited by the Python programs it starts): "instrument me".
RUN_ENV = "DATACAT_RUN"
_OPTIONS = (("product", "DATACAT_PRODUCT"), ("version", "DATACAT_VERSION"), ("url", "DATACAT_URL"))

log = logging.getLogger("datacat.runner")


def environment(args: argparse.Namespace, base: Mapping[str, str]) -> dict[str, str]:
    """The program's environment: ``base`` plus the bootstrap path and DataCat's options."""
    env = dict(base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (BOOTSTRAP_DIR, base.get("PYTHONPATH")) if p)
    env[RUN_ENV] = "1"
    if not getattr(args, "product", None) and not base.get("DATACAT_PRODUCT"):
        env["DATACAT_PRODUCT"] = default_product(command_of(args))
    for option, variable in _OPTIONS:
        if getattr(args, option, None):
            env[variable] = str(getattr(args, option))
    if getattr(args, "daemon", False):
        env["DATACAT_DAEMON"] = "1"
    return env


def default_product(command: Sequence[str]) -> str:
    """The program's name: the script's or ``-m`` module's for ``python``, else the command's."""
    if not command:
        return "python"
    name = Path(command[0]).name
    if not name.startswith("python"):
        return name
    rest = iter(command[1:])
    for arg in rest:
        if arg == "-m":
            return next(rest, name)
        if arg == "-c":
            return name
        if not arg.startswith("-"):
            return Path(arg).stem
    return name


def command_of(args: argparse.Namespace) -> list[str]:
    """The program's command line (argparse keeps a leading ``--``)."""
    command: Sequence[str] = args.program or []
    return list(command[1:] if command[:1] == ["--"] else command)


def main(args: argparse.Namespace) -> int:
    """``datacat run``: replace this process with the instrumented command."""
    command = command_of(args)
    if not command:
        print(
            "datacat run: no command given (datacat run [options] -- COMMAND ...)", file=sys.stderr
        )
        return 2
    try:
        os.execvpe(command[0], command, environment(args, os.environ))
    except OSError as exc:
        print(f"datacat run: cannot run {command[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    return 0  # not reached: exec does not return


def bootstrap(env: Mapping[str, str] | None = None) -> Any:
    """Inside the program: a session for the run, background heartbeats (so a long run is not
    taken for suspended, and the daemon can tell a frozen process), every instrumentor on.
    Never raises."""
    env = os.environ if env is None else env
    if env.get(RUN_ENV) != "1":
        return None
    try:
        from datacat import autoinstrument

        session = autoinstrument.instrument()
        session.start_heartbeat()
        return session
    except Exception:
        log.warning("datacat: could not instrument this program", exc_info=True)
        return None
