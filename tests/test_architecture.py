"""DESIGN.md's dependency rules, proved by reading the code (AST) rather than trusting it.

- only ``datacat/transport.py`` imports requests; only ``datacat/otel.py`` imports opentelemetry;
  only ``datacat/track.py`` and ``datacat/autoinstrument/`` import wrapt;
- the core (``model``, ``limits``, ``merge``, ``errors``, ``rowbodies``) imports only the
  standard library and itself;
- ``datacat_server`` imports from ``datacat`` only the core;
- nothing outside the tests imports ``pytest_datacat`` or ``datacat_server`` (each may import
  itself), except ``datacat/cli.py``, which names the server's entry point as a lazy string;
- and at run time, ``import datacat_server`` loads neither the client's sender nor its
  dependencies.

The scanned code is what ships: ``datacat``, ``pytest_datacat`` and ``datacat_server``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = {
    "datacat": REPO / "datacat",
    "pytest_datacat": REPO / "pytest_datacat",
    "datacat_server": REPO / "server" / "datacat_server",
}
CORE = {"datacat.model", "datacat.limits", "datacat.merge", "datacat.errors", "datacat.rowbodies"}
# Third-party libraries and the only places allowed to import them.
OWNERS = {
    "requests": ("datacat/transport.py",),
    "opentelemetry": ("datacat/otel.py",),
    "wrapt": ("datacat/track.py", "datacat/autoinstrument/"),
}
LAZY_HANDLER = ("datacat/cli.py", "datacat_server.serve:main")


def sources() -> Iterator[tuple[str, str, Path]]:
    """``(package, path relative to the repo, file)`` for every shipped module."""
    for package, directory in PACKAGES.items():
        for path in sorted(directory.rglob("*.py")):
            yield package, path.relative_to(REPO).as_posix(), path


def module_name(package: str, path: Path) -> str:
    parts = path.relative_to(PACKAGES[package]).with_suffix("").parts
    return ".".join((package, *parts)).removesuffix(".__init__")


def imports(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports (relative imports resolved; ``from a import b`` gives
    ``a`` and ``a.b``, since ``b`` may be a module), wherever the import statement is."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, package)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _resolve(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{parent}.{node.module}" if node.module else parent


def graph() -> dict[str, tuple[str, set[str]]]:
    """``{module: (relative path, imported modules)}`` of all shipped code."""
    return {
        module_name(package, path): (relative, imports(path, module_name(package, path)))
        for package, relative, path in sources()
    }


GRAPH = graph()


def importers_of(top: str) -> dict[str, str]:
    """``{relative path: first offending import}`` of modules importing ``top`` or below."""
    found = {}
    for relative, imported in GRAPH.values():
        hits = sorted(name for name in imported if name.split(".")[0] == top)
        if hits:
            found[relative] = hits[0]
    return found


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_a_third_party_library_is_imported_in_its_one_place(library: str) -> None:
    strays = {
        path: name
        for path, name in importers_of(library).items()
        if not path.startswith(OWNERS[library])
    }
    assert strays == {}


def in_core(name: str) -> bool:
    """``name`` is a core module or a name inside one (``from datacat.errors import X``)."""
    return any(name == core or name.startswith(f"{core}.") for core in CORE)


def test_the_core_imports_only_the_standard_library_and_itself() -> None:
    for module in sorted(CORE):
        relative, imported = GRAPH[module]
        foreign = {
            name
            for name in imported
            if name.split(".")[0] not in {*sys.stdlib_module_names, "__future__"}
            and not in_core(name)
        }
        assert foreign == set(), relative


def test_the_server_imports_only_the_core_of_the_client() -> None:
    for module, (relative, imported) in GRAPH.items():
        if module.split(".")[0] == "datacat_server":
            client = {name for name in imported if name.split(".")[0] == "datacat"}
            beyond = {name for name in client if name != "datacat" and not in_core(name)}
            assert beyond == set(), relative  # ``datacat`` alone: ``from datacat import model``


@pytest.mark.parametrize("package", ["pytest_datacat", "datacat_server"])
def test_the_plugin_and_the_server_are_imported_by_nobody(package: str) -> None:
    outside = {
        path: name
        for path, name in importers_of(package).items()
        if not path.startswith(PACKAGES[package].relative_to(REPO).as_posix())
    }
    assert outside == {}


def test_only_the_cli_names_the_server_and_only_as_a_lazy_string() -> None:
    mentions = set()
    for package, relative, path in sources():
        if package == "datacat":
            for node in ast.walk(ast.parse(path.read_text())):
                text = node.value if isinstance(node, ast.Constant) else None
                if isinstance(text, str) and text.startswith(("datacat_server", "pytest_datacat")):
                    mentions.add((relative, text))
    assert mentions == {LAZY_HANDLER}


def test_importing_the_server_loads_none_of_the_client_sender() -> None:
    code = (
        "import sys, datacat_server\n"
        "print(sorted(m for m in ('requests', 'wrapt', 'datacat.worker', 'datacat.transport',"
        " 'datacat.session', 'opentelemetry') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr


def test_the_sender_child_loads_no_wire_validation_nor_dataclasses() -> None:
    """``python -m datacat.offload`` starts in every recorded pytest run, on the core the tests
    share: the model (and the ``dataclasses`` and ``inspect`` it brings) cost it ~24 ms."""
    # its loop as ``-m`` runs it, short of the exit (``quick_exit`` would end this script)
    code = (
        "import sys, runpy\n"
        "runpy.run_module('datacat.offload', run_name='offload')['main']()\n"
        "print(sorted(m for m in ('datacat.model', 'dataclasses', 'inspect', 'requests')"
        " if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL,  # EOF at once: no app, nothing to deliver
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout.splitlines()[-1:]) == (0, ["[]"]), done.stderr


def test_the_scan_sees_the_code_it_judges() -> None:
    """Guards the scanner: a broken walk would make every rule above pass vacuously."""
    assert "requests" in GRAPH["datacat.transport"][1]
    assert "wrapt" in GRAPH["datacat.track"][1]
    assert "datacat.model" in GRAPH["datacat_server.storage"][1]
    assert importers_of("datacat_server")  # the server imports its own modules
