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
import tomllib
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
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "git": git_info(config.rootpath),
        "ci": ci_info(os.environ),
    }
    return {key: value for key, value in meta.items() if value is not None}


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
    """Commit and branch of the checkout at ``path``, or ``None`` outside git."""
    # one git process for both (each costs the run's start ~5 ms)
    out = _git(path, "rev-parse", "HEAD", "--abbrev-ref", "HEAD")
    if out is None:
        return None
    commit, _, branch = out.partition("\n")
    info = {"commit": commit}
    if branch and branch != "HEAD":
        info["branch"] = branch
    return info


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
            table = tomllib.load(fh).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
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
    return _git(rootpath, "rev-parse", "--short", "HEAD") or "unknown"
