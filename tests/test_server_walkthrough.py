"""``examples/server_walkthrough.sh`` runs against a real server, with and without jq."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from serverproc import ServerProcess

SCRIPT = Path(__file__).parent.parent / "examples" / "server_walkthrough.sh"
TOOLS = ("bash", "curl", "grep", "sed", "head", "cat", "tr", "printf")

pytestmark = pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("bash")), reason="the walkthrough needs curl"
)


def without_jq(tmp_path: Path) -> str:
    """A PATH holding only the tools the script needs (no jq)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        if found := shutil.which(tool):
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


@pytest.mark.parametrize("jq", [True, False], ids=["with-jq", "without-jq"])
def test_walkthrough_runs(
    jq: bool, tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    if jq and not shutil.which("jq"):
        pytest.skip("jq is not installed (the script does not need it)")
    server = server_factory()
    path = os.environ["PATH"] if jq else without_jq(tmp_path)
    env = {**os.environ, "DATACAT_URL": server.url, "PATH": path}
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert '"applied":5,"duplicates":0' in out and '"applied":0,"duplicates":5' in out
    second = re.search(r"SECOND=([0-9a-f-]{36})", out)
    filtered = out.split("player.level = 3")[1].split("==")[0]
    assert second and second.group(1) in filtered
    assert "X-Next-Cursor" in out and "disk_low" in out.split("warnings only")[1]
