"""`python -m bench --compare REV`: a second gateway built from git revision REV, measured in the same run.

The revision is checked out with `git worktree add --detach` in a temporary directory; the gateway child
process imports it through a directory holding one symlink, `ollama_gate -> <worktree>/src`, put first on
its PYTHONPATH (ahead of the editable install of the working tree). The same virtualenv runs both, so a
revision whose dependencies differ from today's may not start. The worktree is removed afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.processes import REPO


def _git(*arguments: str) -> str:
    completed = subprocess.run(
        ["git", "-C", str(REPO), *arguments], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise SystemExit(f"bench: git {' '.join(arguments)} failed: {completed.stderr.strip()}")
    return completed.stdout.strip()


@contextlib.contextmanager
def revision(rev: str) -> Iterator[tuple[str, str]]:
    """(the directory to put first on PYTHONPATH, the revision's short hash and subject)."""
    described = _git("log", "-1", "--format=%h %s", rev)
    temporary = Path(tempfile.mkdtemp(prefix="ollama-gate-before-"))
    tree = temporary / "tree"
    _git("worktree", "add", "--detach", str(tree), rev)
    try:
        shim = temporary / "path"
        shim.mkdir()
        (shim / "ollama_gate").symlink_to(tree / "src", target_is_directory=True)
        yield str(shim), described
    finally:
        _git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(temporary, ignore_errors=True)
