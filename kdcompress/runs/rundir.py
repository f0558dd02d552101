"""The run folder as a transaction: reserved before training, built aside, published whole, never replacing another run."""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from kdcompress.core.errors import KdcError
from kdcompress.core.files import REPLACED_PREFIX, RESERVED_MARK, STAGING_PREFIX, remove_stale
from kdcompress.core.reporter import Reporter
from kdcompress.deploy.manifest import MANIFEST, Manifest, write_manifest
from kdcompress.train.config import CompressConfig


def check_out(out: str | Path) -> Path:
    """--out may name a new folder, an empty one, or an earlier run (replaced at the end); nothing else.

    Refused before any training: an existing file, a folder that holds anything but a finished run
    (it would be deleted), and the current folder or one above it (it cannot be replaced).
    """
    final = Path(out)
    if final.exists() and not final.is_dir():
        raise KdcError(f"--out {final} exists and is not a folder: pick a new folder name")
    if final.is_dir():
        here = Path.cwd().resolve()
        if final.resolve() == here or final.resolve() in here.parents:
            raise KdcError(f"--out {final} is the current folder or holds it: pick a new sub-folder, such as --out {final / 'run'}")
        if any(final.iterdir()) and not (final / MANIFEST).is_file():
            raise KdcError(
                f"--out {final} is a folder that is not a kdc run (no {MANIFEST}), and it would be replaced: "
                f"pick a new or empty folder"
            )
    return final


@dataclass
class RunFolder:
    """Where a run is built (staging) and published (final), and what this process may replace there.

    final is reserved before training: an empty folder this process made (reserved), an empty one the user
    gave as --out, or an earlier run at --out, whose manifest's identity (replaces) is the one run this
    process was asked to replace.
    """

    final: Path
    staging: Path
    reserved: bool = False
    replaces: tuple[int, int] | None = None


def _identity(run_dir: Path) -> tuple[int, int] | None:
    """What tells one finished run from another written at the same path: its manifest's inode and mtime."""
    try:
        info = (run_dir / MANIFEST).stat()
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns)


def reserve(root: Path, name: str) -> Path:
    """Make a new, empty folder root/name, or root/name-2, -3... when that name is taken: atomic (mkdir)."""
    root.mkdir(parents=True, exist_ok=True)
    candidate, suffix = root / name, 2
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            candidate = root / f"{name}-{suffix}"
            suffix += 1


def prepare_run_dir(cfg: CompressConfig) -> RunFolder:
    """Reserve the final run folder, and make the staging folder the run is built in (renamed into place at the end).

    Two runs started in the same second get two folders: the name is taken by mkdir, which only one can win.
    """
    made: list[Path] = []  # what this call made, removed again if it is interrupted half-way (SIGTERM, Ctrl-C)
    try:
        if cfg.out:
            final = check_out(cfg.out)
            replaces = _identity(final)
            reserved = not final.exists()
            if reserved:
                final.parent.mkdir(parents=True, exist_ok=True)
                try:
                    final.mkdir()
                except FileExistsError:  # made by another run since check_out: this one must not fill it
                    final, replaces = reserve(final.parent, final.name), None
        else:
            final = reserve(Path(cfg.artifacts), f"{cfg.dataset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
            reserved, replaces = True, None
        if reserved:
            made.append(final)
        remove_stale(final.parent)
        staging = final.parent / f"{STAGING_PREFIX}{final.name}.{os.getpid()}"
        staging.mkdir(parents=True)
        made.append(staging)
        if reserved:  # a later run removes the empty folder if this process is killed (files.remove_stale)
            (staging / RESERVED_MARK).write_text(final.name)
    except BaseException as exc:
        for path in reversed(made):  # the staging folder with what it holds; the reserved folder only while empty
            if path.name.startswith(STAGING_PREFIX):
                shutil.rmtree(path, ignore_errors=True)
            else:
                _remove_empty(path)
        if isinstance(exc, OSError):
            where = cfg.out or cfg.artifacts
            raise KdcError(f"cannot create the run folder in {where} ({exc.strerror or exc}): pick a writable folder") from None
        raise
    return RunFolder(final, staging, reserved, replaces)


def discard_run(folder: RunFolder) -> None:
    """An unfinished run: its staging folder goes, and so does the final folder this process reserved (still empty)."""
    shutil.rmtree(folder.staging, ignore_errors=True)
    if folder.reserved:
        _remove_empty(folder.final)


def _remove_empty(path: Path) -> None:
    """Remove a folder this process reserved, only while it is empty: never a run another process published there."""
    try:
        path.rmdir()
    except OSError:
        pass


def publish_run(folder: RunFolder, manifest: Manifest, reporter: Reporter) -> Path:
    """Move the finished run into place and return where it went.

    Onto its reserved empty folder, or over the earlier run at --out that it was asked to replace (removed only
    now). A finished run it was not asked to replace (another process's, written there meanwhile) is never
    replaced: this run goes to a new folder beside it, named with a suffix, and the manifest says so.
    """
    final = folder.final
    (folder.staging / RESERVED_MARK).unlink(missing_ok=True)
    while True:
        try:
            if folder.replaces is not None and _identity(final) == folder.replaces:
                old = final.parent / f"{REPLACED_PREFIX}{final.name}.{os.getpid()}"
                os.replace(final, old)
                os.replace(folder.staging, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(folder.staging, final)  # onto an empty folder, atomically; refused when it holds anything
            return final
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
        taken, final = final, reserve(final.parent, final.name)
        folder.final, folder.reserved, folder.replaces = final, True, None
        manifest.run = final.name
        note = f"{taken} was filled by another run while this one trained; this run was written to {final} instead"
        manifest.warnings.append(note)
        write_manifest(folder.staging, manifest)
        reporter.warn(note)
