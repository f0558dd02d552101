"""Finding runs: a run folder itself, or the finished runs under an artifacts root, oldest first."""

from __future__ import annotations

from pathlib import Path

from kdcompress.core.errors import KdcError
from kdcompress.deploy.manifest import MANIFEST, read_run_json


def list_runs(root: str | Path) -> list[Path]:
    """Finished runs under an artifacts root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()]
    return sorted(runs, key=lambda p: (_created(p), p.name))


def _created(run_dir: Path) -> float:
    """When a run was made: its manifest's own `created` time, which a later --rehash or quantize (they rewrite the
    manifest) does not move; the manifest's modification time for a run that records none or cannot be read."""
    from datetime import datetime

    try:
        created = read_run_json(run_dir, MANIFEST).get("created")
        return datetime.fromisoformat(created).timestamp()
    except (KdcError, AttributeError, TypeError, ValueError):
        return (run_dir / MANIFEST).stat().st_mtime


def resolve_runs(path: str | Path, all_runs: bool = False) -> list[Path]:
    """A run folder itself, or the newest finished run (every run with all_runs) under an artifacts root.

    A folder that holds no run but an artifacts/ folder with runs in it (a project's root: `kdc benchmark .`) is
    read as that artifacts root."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return [path]
    if not path.is_dir():
        raise KdcError(f"folder not found: {path} (run kdc compress first, or pass a run folder)")
    runs = list_runs(path) or list_runs(path / "artifacts")
    if not runs:
        raise KdcError(f"no finished run in {path}: run kdc compress first (a run is finished once it has {MANIFEST})")
    return runs if all_runs else [runs[-1]]


