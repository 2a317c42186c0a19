"""Where sft keeps its caches, and how a cached folder appears: built aside, then moved into place whole, so an
entry is complete or absent, and a second process that built the same entry keeps the first one's."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from sft_cli.errors import SftError


def cache_home() -> Path:
    """`$XDG_CACHE_HOME/sft`, else `~/.cache/sft`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sft"


def build_aside(target: Path) -> Path:
    """An empty folder beside `target` (`NAME.partial-*`) to build it in; a place sft cannot write to is one error
    naming it, before any work."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        aside = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=target.parent))
        umask = os.umask(0o022)
        os.umask(umask)
        aside.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make the finished folder private to its writer
        return aside
    except OSError as error:
        raise write_error(target.parent, error, "creating a folder") or error from None


@contextlib.contextmanager
def building(target: Path, doing: str) -> Iterator[Path]:
    """A folder to build `target` in (`build_aside`), removed if the building fails or is interrupted; a failure
    for the disk's sake becomes one error naming the folder (`write_error`). The caller moves the folder in."""
    aside = build_aside(target)
    try:
        yield aside
    except BaseException as error:  # Ctrl-C and SIGTERM too: nothing half-written stays
        shutil.rmtree(aside, ignore_errors=True)
        raise write_error(target.parent, error, doing) or error from None


def check_writable(folder: Path, doing: str) -> None:
    """Fail now, with one error, where no file can be created in `folder` (read-only, not permitted, full), rather
    than after the work whose result would go there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise write_error(folder, error, doing) or SftError(
            f"{folder}: cannot write here while {doing} ({error})"
        ) from None


def write_error(folder: Path, error: BaseException, doing: str) -> SftError | None:
    """The one error for a write that failed for its disk's sake (full, read-only, not permitted), naming the folder
    and, when full, the space left; None for any other failure, which keeps its traceback."""
    code = getattr(error, "errno", None)
    if disk_full(error):
        existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("/"))
        free = shutil.disk_usage(existing).free / 2**20
        return SftError(
            f"{folder}: no space left on the device while {doing} ({free:.1f} MB free)",
            hint="free some space or write elsewhere; nothing half-written was kept",
        )
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return SftError(f"{folder}: cannot write here while {doing} ({os.strerror(code)})")
    return None


def disk_full(error: BaseException) -> bool:
    """Whether a write failed because its disk is full (torch's zip writer says so only in its message)."""
    return getattr(error, "errno", None) == errno.ENOSPC or "No space left" in str(error)


def move_into_place(partial: Path, target: Path) -> None:
    """Move a finished folder to `target`. Where another process finished the same one first, theirs stays (it may
    be in use) and ours goes. A damaged `target` is the caller's to remove before building."""
    try:
        os.replace(partial, target)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)


def refuse_overlap(target: Path, keep: Iterable[Path], option: str) -> None:
    """An output may not be, lie inside or hold a path sft must not change (a run folder, the recipe, its data)."""
    resolved = target.resolve()
    for kept in keep:
        kept = Path(kept).resolve()
        if resolved == kept or resolved in kept.parents or kept in resolved.parents:
            where = "is" if resolved == kept else "holds" if resolved in kept.parents else "lies inside"
            raise SftError(
                f"{option} {target} {where} {kept}, which sft must not change",
                hint=f"pick a folder apart from it for {option}",
            )


def refuse_foreign(target: Path, option: str, what: str) -> None:
    """`--overwrite` replaces only what sft wrote: a folder of anyone's other files is never deleted."""
    shown = ", ".join(sorted(p.name for p in target.iterdir())[:4]) if target.is_dir() else "a file"
    raise SftError(
        f"{option} {target} holds files sft did not write ({shown}); --overwrite replaces only {what}",
        hint=f"pick an empty or new folder for {option}",
    )


def guard_output(
    target: Path,
    *,
    option: str,
    overwrite: bool,
    written_by_sft: Callable[[Path], bool],
    what: str,
    keep: Iterable[Path] = (),
) -> None:
    """Refuse an output that would lose data: one that overlaps a path to `keep`, or an existing one that only
    `--overwrite` replaces, and then only if sft wrote it (`what` names such a folder in the messages)."""
    refuse_overlap(target, keep, option)
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return
    if not (target.is_dir() and written_by_sft(target)):
        refuse_foreign(target, option, what)
    if not overwrite:
        raise SftError(f"{target} already holds {what}", hint=f"pick another {option}, or pass --overwrite")
