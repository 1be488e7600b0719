"""The run's metadata and the product/version defaults, on real folders and a real git checkout."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_datacat import metadata


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"CI": "true"}, {"provider": "unknown"}),
        (
            {"GITHUB_ACTIONS": "true", "GITHUB_RUN_ID": "42", "HOME": "/root"},
            {"provider": "github-actions", "GITHUB_RUN_ID": "42"},
        ),
        (
            {"GITLAB_CI": "true", "CI_PIPELINE_ID": "7"},
            {"provider": "gitlab-ci", "CI_PIPELINE_ID": "7"},
        ),
    ],
)
def test_ci_provider_and_its_variables(
    environ: dict[str, str], expected: dict[str, str] | None
) -> None:
    assert metadata.ci_info(environ) == expected


def test_product_and_version_come_from_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "shop"\nversion = "1.2"\n')
    assert metadata.default_product(tmp_path) == "shop"
    assert metadata.default_version(tmp_path) == "1.2"


def test_without_pyproject_or_git_the_folder_names_the_product(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("not [toml")
    assert metadata.default_product(tmp_path) == tmp_path.name
    assert metadata.git_info(tmp_path) is None
    assert metadata.default_version(tmp_path) == "unknown"


def test_git_commit_and_branch(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True)
        return done.stdout.strip()

    git("init", "-q", "-b", "feature")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x")
    assert metadata.git_info(tmp_path) == {"commit": git("rev-parse", "HEAD"), "branch": "feature"}
    assert metadata.default_version(tmp_path) == git("rev-parse", "--short", "HEAD")


def _git_in(folder: Path) -> Callable[..., str]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True)
        return done.stdout.strip()

    return git


def _as_git_says(folder: Path) -> dict[str, str] | None:
    out = _git_in(folder)("rev-parse", "HEAD", "--abbrev-ref", "HEAD").split("\n")
    if len(out) < 2:
        return None
    return {"commit": out[0], **({"branch": out[1]} if out[1] != "HEAD" else {})}


def test_git_info_is_read_from_the_files_as_git_would_say_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loose and packed refs, a detached head, a linked worktree, an unborn branch, a
    subfolder: what the files give equals ``git rev-parse``, and no git process runs."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git = _git_in(repo)
    commit = ("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty")
    seen: list[tuple[dict[str, str] | None, dict[str, str] | None]] = []

    def check(folder: Path) -> None:
        with monkeypatch.context() as patch:
            patch.setattr(metadata.subprocess, "run", _no_process)
            found = metadata.git_info(folder)
        seen.append((found, _as_git_says(folder)))

    git("init", "-q", "-b", "main")
    check(repo)  # unborn: no commit yet
    git(*commit, "-m", "one")
    (repo / "sub").mkdir()
    check(repo / "sub")  # loose ref, from a subfolder
    git("pack-refs", "--all")
    check(repo)  # packed ref
    git(*commit, "-m", "two")
    git("worktree", "add", "-q", "-b", "side", str(tmp_path / "side"))
    check(tmp_path / "side")  # linked worktree
    git("checkout", "-q", "--detach")
    check(repo)  # detached
    assert [found for found, _ in seen] == [expected for _, expected in seen]
    assert seen[0][0] is None and seen[3][0] is not None and seen[3][0]["branch"] == "side"
    assert seen[4][0] is not None and "branch" not in seen[4][0]


def _no_process(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"a process was started: {args}")


def test_outside_a_checkout_no_git_process_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metadata.subprocess, "run", _no_process)
    assert metadata.git_info(tmp_path) is None
    assert metadata.default_version(tmp_path) == "unknown"


def test_secrets_in_the_command_line_are_redacted() -> None:
    args = [
        "-q",
        "--datacat-api-key=SECRET1",
        "--datacat-api-key",
        "SECRET2",
        "-o",
        "datacat_api_key=SECRET3",
        "--datacat-url=http://user:SECRET4@host:8000",
        "--datacat-url",
        "https://SECRET5@host/x",
        "-k",
        "keyword and key",
        "tests/test_x.py",
    ]
    got = metadata.redacted_args(args)
    assert not any("SECRET" in arg for arg in got)
    assert got == [
        "-q",
        "--datacat-api-key=***",
        "--datacat-api-key",
        "***",
        "-o",
        "datacat_api_key=***",
        "--datacat-url=http://***@host:8000",
        "--datacat-url",
        "https://***@host/x",
        "-k",
        "keyword and key",
        "tests/test_x.py",
    ]


def test_the_platform_reads_as_the_standard_library_says_it() -> None:
    import platform

    assert metadata.platform_name() == platform.platform()
