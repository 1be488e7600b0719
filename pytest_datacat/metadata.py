"""What a test run is: its product name and version defaults and the metadata put in the state.

Everything here is read once at the start of a recorded run; secrets in the command line (API
keys, a URL's user:password) are redacted before they reach the state. Every probe is best effort: a
missing ``git``, an unreadable ``pyproject.toml`` or an odd CI variable yields ``None``, never an
error, because the plugin must never change the run.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

# CI provider → the variable that identifies it and the variables worth keeping.
_CI_PROVIDERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "github-actions": (
        "GITHUB_ACTIONS",
        (
            "GITHUB_REPOSITORY",
            "GITHUB_RUN_ID",
            "GITHUB_RUN_NUMBER",
            "GITHUB_SHA",
            "GITHUB_REF_NAME",
            "GITHUB_WORKFLOW",
            "GITHUB_JOB",
            "GITHUB_SERVER_URL",
        ),
    ),
    "gitlab-ci": (
        "GITLAB_CI",
        (
            "CI_PROJECT_PATH",
            "CI_PIPELINE_ID",
            "CI_JOB_ID",
            "CI_COMMIT_SHA",
            "CI_COMMIT_REF_NAME",
            "CI_JOB_URL",
        ),
    ),
    "jenkins": ("JENKINS_URL", ("JOB_NAME", "BUILD_NUMBER", "BUILD_URL", "GIT_COMMIT")),
    "circleci": (
        "CIRCLECI",
        (
            "CIRCLE_PROJECT_REPONAME",
            "CIRCLE_BUILD_NUM",
            "CIRCLE_SHA1",
            "CIRCLE_BRANCH",
            "CIRCLE_BUILD_URL",
        ),
    ),
    "buildkite": (
        "BUILDKITE",
        (
            "BUILDKITE_PIPELINE_SLUG",
            "BUILDKITE_BUILD_NUMBER",
            "BUILDKITE_COMMIT",
            "BUILDKITE_BRANCH",
            "BUILDKITE_BUILD_URL",
        ),
    ),
    "azure-pipelines": (
        "TF_BUILD",
        ("BUILD_BUILDID", "BUILD_SOURCEVERSION", "BUILD_SOURCEBRANCHNAME", "BUILD_REPOSITORY_NAME"),
    ),
    "travis": (
        "TRAVIS",
        (
            "TRAVIS_REPO_SLUG",
            "TRAVIS_BUILD_NUMBER",
            "TRAVIS_COMMIT",
            "TRAVIS_BRANCH",
            "TRAVIS_BUILD_WEB_URL",
        ),
    ),
}


def run_metadata(config: pytest.Config) -> dict[str, Any]:
    """The ``pytest`` part of the session state: how, where and on what the run started."""
    meta = {
        "args": redacted_args(config.invocation_params.args),
        "rootdir": str(config.rootpath),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "pytest": pytest.__version__,
        "platform": platform_name(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "git": git_info(config.rootpath),
        "ci": ci_info(os.environ),
    }
    return {key: value for key, value in meta.items() if value is not None}


def platform_name() -> str:
    """What ``platform.platform()`` says (``Linux-6.1.0-x86_64-with-glibc2.36``), without its
    scan of the interpreter's binary for the C library's version (~8 ms at every run's start):
    ``os.confstr`` knows it. Elsewhere than on glibc's Linux, ``platform.platform()`` itself."""
    try:
        system, _, release, _, machine = os.uname()
        libc = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"
    except (AttributeError, ValueError, OSError):  # no uname (Windows), no such name
        return platform.platform()
    if system != "Linux" or not libc or not libc.startswith("glibc "):
        return platform.platform()
    return f"{system}-{release}-{machine}-with-glibc{libc.removeprefix('glibc ')}"


#: What a secret in the run's arguments is replaced by.
REDACTED = "***"
# Words that make an option (``--datacat-api-key``, ``-o datacat_api_key=...``) a secret.
_SECRET_WORDS = frozenset({"key", "token", "password", "passwd", "secret", "credentials"})
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redacted_args(args: Any) -> list[str]:
    """The command line without secrets (they would end up in the state and the dashboard):
    the value of a secret-named option (``--datacat-api-key=K``, ``--datacat-api-key K``,
    ``-o datacat_api_key=K``) and the user:password of a URL become ``REDACTED``."""
    out: list[str] = []
    hide_next = False
    for arg in map(str, args):
        name, eq, _ = arg.partition("=")
        if hide_next:
            out.append(REDACTED)
        elif eq and _secret(name):
            out.append(f"{name}={REDACTED}")
        else:
            out.append(redact_url(arg))
        hide_next = not hide_next and not eq and arg.startswith("--") and _secret(arg)
    return out


def _secret(name: str) -> bool:
    return not _SECRET_WORDS.isdisjoint(re.split(r"[-_.\s]+", name.lower()))


def redact_url(text: str) -> str:
    """``text`` with the user:password of any URL in it replaced by ``REDACTED``."""
    return _USERINFO.sub(REDACTED + "@", text) if "@" in text else text


def git_info(path: Path) -> dict[str, str] | None:
    """Commit and branch of the checkout at ``path``, or ``None`` outside git. Read from the
    repository's own files (``HEAD``, the ref, ``packed-refs``): a ``git`` process costs the
    run's start ~5 ms. What the files do not say plainly (``GIT_DIR``, a reftable
    repository, ...) is asked of ``git rev-parse``."""
    if "GIT_DIR" not in os.environ:
        gitdir = git_dir(path)
        if gitdir is None:
            return None  # not a checkout: no process to learn it
        head = _read_head(gitdir)
        if head == _UNBORN:
            return None  # a new repository: no commit yet
        if head is not None:
            commit, branch = head
            return {"commit": commit, **({"branch": branch} if branch else {})}
    out = _git(path, "rev-parse", "HEAD", "--abbrev-ref", "HEAD")
    if out is None:
        return None
    commit, _, branch = out.partition("\n")
    info = {"commit": commit}
    if branch and branch != "HEAD":
        info["branch"] = branch
    return info


def git_dir(path: Path) -> Path | None:
    """The git directory of the checkout holding ``path`` (``.git``, or where a worktree's
    ``.git`` file points), found as git finds it: up from ``path``."""
    for folder in (path, *path.parents):
        dot_git = folder / ".git"
        if dot_git.is_dir():
            return dot_git
        if dot_git.is_file():
            text = dot_git.read_text(errors="replace").strip()
            if text.startswith("gitdir:"):
                return (folder / text[len("gitdir:") :].strip()).resolve()
            return None
    return None


#: What ``_read_head`` says of a branch with no commit yet (``git init``, nothing committed).
_UNBORN = ("", None)


def _read_head(gitdir: Path) -> tuple[str, str | None] | None:
    """``(commit, branch or None)`` of ``HEAD``, ``_UNBORN``, or ``None`` when the files do
    not say (ask git)."""
    try:
        head = (gitdir / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return (head, None) if _is_object_id(head) else None
        ref = head[len("ref: ") :]
        commit = _resolve(gitdir, ref)
    except (OSError, UnicodeDecodeError):
        return None
    if commit is None:
        return None
    if commit == "":
        return _UNBORN
    return commit, ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None


def _resolve(gitdir: Path, ref: str) -> str | None:
    """The object id ``ref`` names: its loose file (in the worktree's or the common git
    directory), else its line in ``packed-refs``; ``""`` when neither has it (no commit yet);
    ``None`` for what this does not read (refs in a reftable)."""
    common_file = gitdir / "commondir"
    common = (gitdir / common_file.read_text().strip()) if common_file.is_file() else gitdir
    if (common / "reftable").is_dir():
        return None
    for base in (gitdir, common):
        loose = base / ref
        if loose.is_file():
            value = loose.read_text().strip()
            return value if _is_object_id(value) else None
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            value, _, name = line.partition(" ")
            if name == ref:
                return value if _is_object_id(value) else None
    return ""


def _is_object_id(text: str) -> bool:
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)


def _git(path: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=path, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def ci_info(environ: os._Environ[str] | dict[str, str]) -> dict[str, Any] | None:
    """The CI provider and its identifying variables, or ``None`` outside CI."""
    for provider, (marker, names) in _CI_PROVIDERS.items():
        if environ.get(marker):
            return {"provider": provider, **{n: environ[n] for n in names if n in environ}}
    if environ.get("CI"):
        return {"provider": "unknown"}
    return None


def project(rootpath: Path) -> dict[str, Any]:
    """The ``[project]`` table of the rootdir's ``pyproject.toml`` (empty when unreadable)."""
    try:
        with open(rootpath / "pyproject.toml", "rb") as fh:
            import tomllib  # late: ~3 ms, only for a project that has the file

            table = tomllib.load(fh).get("project", {})
    except OSError:
        return {}
    except ValueError:  # tomllib.TOMLDecodeError
        return {}
    return table if isinstance(table, dict) else {}


def default_product(rootpath: Path) -> str:
    """The project's name from ``pyproject.toml``, else the rootdir's name."""
    name = project(rootpath).get("name")
    return name if isinstance(name, str) and name else rootpath.name or "pytest"


def default_version(rootpath: Path) -> str:
    """The project's static version, else the short git commit, else ``"unknown"``."""
    version = project(rootpath).get("version")
    if isinstance(version, str) and version:
        return version
    if "GIT_DIR" not in os.environ and git_dir(rootpath) is None:
        return "unknown"  # not a checkout: no git process to learn it
    return _git(rootpath, "rev-parse", "--short", "HEAD") or "unknown"
