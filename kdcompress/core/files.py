"""Safe writes: JSON and YAML through a temporary file and a rename, and hidden working folders cleaned up after killed runs."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

# Hidden working folders, named <prefix><name>.<pid> by the process that owns them.
STAGING_PREFIX = ".partial-"  # a run being built (renamed into place when complete)
REPLACED_PREFIX = ".replaced-"  # an earlier run at --out, deleted once the new one is in place
QUANTIZE_PREFIX = ".quantize-"  # kdc quantize's candidates, inside a run folder
TEACHER_TMP_SUFFIX = ".tmp"  # .teachers/.<key>.<pid>.tmp: a teacher being cached
RESERVED_MARK = ".kdc-reserved"  # in a staging folder: the name of the empty final folder its run reserved


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    _write_atomic(path, _json_text(data))


def write_json_to(path: Path, data: Any) -> None:
    """Write JSON as write_json_atomic formats it, to a path of write_together's (already a temporary file)."""
    path.write_text(_json_text(data))


def _json_text(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def write_yaml_atomic(path: Path, data: dict[str, Any], header: str = "") -> None:
    """Write a mapping as YAML (keys in the given order, after header's comment lines), atomically."""
    import yaml

    comments = "".join(f"# {line}\n" for line in header.splitlines())
    _write_atomic(path, comments + yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


MAX_CONFIG_BYTES = 1 << 20  # a config file is a few dozen lines; anything this large is not one


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file holding one mapping (a config file); a KdcError saying what is wrong with it otherwise.

    Any readable file will do, a pipe too (--config /dev/stdin, <(...)). It may hold at most MAX_CONFIG_BYTES and no
    YAML aliases (*name), which a config never needs and which can expand a small file past any memory.
    """
    import yaml

    from kdcompress.core.errors import KdcError

    if path.is_dir():
        raise KdcError(f"{path} is a folder: give a YAML file of option values")
    if not path.exists():
        raise KdcError(f"{path} not found: give a YAML file of option values")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise KdcError(f"{path} is larger than {MAX_CONFIG_BYTES // (1 << 20)} MB: a config file holds option values, a few lines")
        data = yaml.load(raw.decode("utf-8"), Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader without aliases)
    except (OSError, UnicodeDecodeError) as exc:
        raise KdcError(f"{path} is unreadable ({exc})") from None
    except _AliasFound:
        raise KdcError(f"{path} uses YAML aliases (*name): write each value out in full") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise KdcError(f"{path} is not valid YAML{line}: fix it, or start from a run's config.yaml") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KdcError(f"{path} holds a {type(data).__name__}, not a mapping of option names to values (teacher-epochs: 60)")
    return data


class _AliasFound(Exception):
    """A YAML alias in a config file (refused: see read_yaml_mapping)."""


def _no_alias_loader() -> Any:
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise _AliasFound()
            return super().compose_node(parent, index)

    return NoAliasLoader


class _LazyLoader:
    """The alias-refusing loader, built on first use (yaml is imported only when a config file is read)."""

    def __call__(self, stream: Any) -> Any:
        return _no_alias_loader()(stream)


_NoAliasLoader = _LazyLoader()


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM off while the block runs (a few renames, a folder made and registered for clean-up):
    one that arrives meanwhile is recorded, and delivered to the handler in force as the block ends, so it never lands
    between two steps that belong together. Python runs signal handlers in the main thread whichever thread the signal
    reached, so holding them there holds them for the process; elsewhere the block runs as it is."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    kinds = (signal.SIGINT, signal.SIGTERM)
    previous = {kind: signal.getsignal(kind) for kind in kinds}
    for kind in kinds:
        signal.signal(kind, lambda number, frame: pending.append(number))
    try:
        yield
    finally:
        for kind, handler in previous.items():
            signal.signal(kind, handler if handler is not None else signal.SIG_DFL)
        if pending:
            signal.raise_signal(pending[0])


def write_together(folder: Path, writers: dict[str, Callable[[Path], None]]) -> list[str]:
    """Write several files of one result as one: each writer renders its file to a hidden temporary file in folder, and
    only once all are rendered are they renamed into place, with Ctrl-C and SIGTERM held off for the renames.

    A rename replaces a link at the name instead of writing through it, so a result file that is a link (a run shared
    as a tar keeps its links) never sends the write outside folder. When a writer fails (a full disk, ulimit -f, an
    interruption), the temporaries are removed, nothing is replaced, and the error is raised. Returns the names
    written, in order. writers: file name -> a function that writes that file's content to the path it is given
    (the path keeps the name's suffix, so matplotlib's savefig knows the format).
    """
    rendered: dict[str, Path] = {}
    try:
        for name, write in writers.items():
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=f".tmp{Path(name).suffix}")
            os.close(fd)
            rendered[name] = Path(tmp)
            write(Path(tmp))
            os.chmod(tmp, 0o666 & ~_umask())
        with signals_held():
            for name, tmp in rendered.items():
                os.replace(tmp, folder / name)
    except BaseException:
        for tmp in rendered.values():
            tmp.unlink(missing_ok=True)
        raise
    return list(rendered)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the mode every other file gets
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _owner(name: str) -> int | None:
    """The process id a hidden working folder's name ends with (.<pid> or .<pid>.tmp), if any."""
    stem = name[: -len(TEACHER_TMP_SUFFIX)] if name.endswith(TEACHER_TMP_SUFFIX) else name
    tail = stem.rsplit(".", 1)[-1]
    return int(tail) if tail.isdigit() and "." in stem else None


def remove_stale(folder: Path) -> list[Path]:
    """Delete our working folders left in folder by killed runs: only ours (by prefix), only when their process is gone."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        ours = path.name.startswith((STAGING_PREFIX, REPLACED_PREFIX, QUANTIZE_PREFIX)) or (
            path.name.startswith(".") and path.name.endswith(TEACHER_TMP_SUFFIX) and folder.name == ".teachers"
        )
        pid = _owner(path.name) if ours and path.is_dir() else None
        if pid is not None and pid != os.getpid() and not pid_alive(pid):
            reserved = _reserved_by(path)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            if reserved:  # the empty run folder the killed run had reserved (never one that holds anything)
                try:
                    (folder / reserved).rmdir()
                except OSError:
                    pass
    return removed


def _reserved_by(staging: Path) -> str | None:
    """The name of the final folder a staging folder's run reserved (RESERVED_MARK), if it names a plain sibling."""
    try:
        name = (staging / RESERVED_MARK).read_text().strip()
    except OSError:
        return None
    return name if name and "/" not in name and name not in (".", "..") else None


RUN_LOCK = ".kdc-run.lock"  # in a run folder: "<pid> <command>" of the kdc command working in it


@contextmanager
def folder_lock(folder: Path, command: str) -> Iterator[None]:
    """Hold folder's one lock for `kdc command` while the block runs; a KdcError naming the holder when a live process
    holds it. Every command that writes into a run folder (quantize, benchmark, --rehash) takes this same lock, and
    reads the manifest again under it, so no writer drops what another added meanwhile.

    The lock is a file holding the holder's process id and command, created whole (written aside, then hard-linked
    into place, which fails when the name exists), so a reader never sees it empty. A lock whose process is gone
    (a killed run) is taken over. It is removed on the way out, Ctrl-C and SIGTERM included.
    """
    from kdcompress.core.errors import KdcError

    lock = folder / RUN_LOCK
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".kdc-run.", suffix=f".{os.getpid()}.tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()} {command}")
        for _ in range(2):
            try:
                os.link(tmp, lock)
                break
            except FileExistsError:
                holder, held_by = _lock_holder(lock)
                if holder is not None and pid_alive(holder):
                    raise KdcError(
                        f"another kdc {held_by} (process {holder}) is working in {folder}: wait for it to finish and retry "
                        f"(or delete {lock} if no such process runs)"
                    ) from None
                lock.unlink(missing_ok=True)  # its process is gone
        else:
            raise KdcError(f"another kdc command keeps taking the lock of {folder}: wait for it to finish and retry")
    finally:
        Path(tmp).unlink(missing_ok=True)
    try:
        yield
    finally:
        if _lock_holder(lock)[0] == os.getpid():
            lock.unlink(missing_ok=True)


def _lock_holder(lock: Path) -> tuple[int | None, str]:
    """The process id and command a lock file names (None when it is unreadable or not a lock)."""
    try:
        pid, _, command = lock.read_text().strip().partition(" ")
    except (OSError, UnicodeDecodeError):
        return None, ""
    return (int(pid), command or "command") if pid.isdigit() else (None, "")


def read_json(path: Path, remedy: str) -> Any:
    """A JSON file written by write_json_atomic; a KdcError (ending with remedy) when it is damaged."""
    from kdcompress.core.errors import KdcError

    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KdcError(f"{path} is unreadable ({exc}): {remedy}") from None
