"""DataCat's ``sitecustomize`` for ``datacat run``: instruments the program, then chains.

``datacat run`` puts this directory first on ``PYTHONPATH`` (as ``opentelemetry-instrument``
does), so Python imports this module at start-up. It starts DataCat (``datacat.runner.bootstrap``:
a session and every instrumentor) and then runs the ``sitecustomize`` that would have been
imported without it, if any. Nothing here may stop the program from starting.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys


def _chain() -> None:
    """Run the next ``sitecustomize`` on ``sys.path`` under its own name, as if we were absent."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


def _start() -> None:
    try:
        from datacat.runner import bootstrap
    except ImportError:  # another interpreter without DataCat installed: run uninstrumented
        return
    bootstrap()


_start()
_chain()
