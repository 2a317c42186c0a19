"""Where sft keeps its caches, and how a cached folder appears: built aside, then moved into place whole, so an
entry is complete or absent, and a second process that built the same entry keeps the first one's."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def cache_home() -> Path:
    """`$XDG_CACHE_HOME/sft`, else `~/.cache/sft`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sft"


def build_aside(target: Path) -> Path:
    """An empty folder beside `target` (`NAME.partial-*`) to build it in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=target.parent))


def move_into_place(partial: Path, target: Path) -> None:
    """Move a finished folder to `target`. Where another process finished the same one first, theirs stays (it may
    be in use) and ours goes. A damaged `target` is the caller's to remove before building."""
    try:
        os.replace(partial, target)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
