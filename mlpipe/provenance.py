"""Who started a run, where, and from which commit: recorded in the run record for audits.

The git commit is read from the repository's files (``.git/HEAD``, the ref it
names, ``packed-refs``), without running git: a run pays microseconds, not a
subprocess. This module only reads; what a run record holds is decided by the
backends that write it.
"""

from __future__ import annotations

import getpass
import os
import socket
from pathlib import Path
from typing import Any

__all__ = ["git_state", "provenance"]


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (some containers)
        return None


def git_state(start: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The commit checked out in the git work tree containing ``start`` (default: the working directory).

    Returns:
        ``{"commit": sha, "branch": name or None, "root": work tree}``, or None outside a git work tree.
    """
    here = Path(start or os.getcwd()).resolve()
    for directory in (here, *here.parents):
        dot_git = directory / ".git"
        if dot_git.is_file():  # a worktree or submodule: "gitdir: <path>"
            text = dot_git.read_text().strip()
            if not text.startswith("gitdir:"):
                return None
            git_dir = (directory / text.split(":", 1)[1].strip()).resolve()
        elif dot_git.is_dir():
            git_dir = dot_git
        else:
            continue
        return _read_head(git_dir, directory)
    return None


def _read_head(git_dir: Path, root: Path) -> dict[str, Any] | None:
    try:
        head = (git_dir / "HEAD").read_text().strip()
    except OSError:
        return None
    if not head.startswith("ref:"):
        return {"commit": head, "branch": None, "root": str(root)}
    ref = head.split(":", 1)[1].strip()
    common = git_dir
    commondir = git_dir / "commondir"
    if commondir.is_file():  # linked worktrees keep refs in the main repository
        common = (git_dir / commondir.read_text().strip()).resolve()
    for base in (git_dir, common):
        loose = base / ref
        if loose.is_file():
            return {"commit": loose.read_text().strip(), "branch": ref.removeprefix("refs/heads/"), "root": str(root)}
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            sha, _, name = line.partition(" ")
            if name == ref:
                return {"commit": sha, "branch": ref.removeprefix("refs/heads/"), "root": str(root)}
    return {"commit": None, "branch": ref.removeprefix("refs/heads/"), "root": str(root)}  # a branch with no commit


def provenance() -> dict[str, Any]:
    """``user``, ``host``, ``pid`` and ``git`` (see :func:`git_state`) of this process."""
    return {"user": _user(), "host": socket.gethostname(), "pid": os.getpid(), "git": git_state()}
