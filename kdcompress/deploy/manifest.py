"""The artifacts folder contract: one folder per run, finished when its manifest.json exists, read as a typed Manifest."""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdcompress.core import roles
from kdcompress.core.errors import KdcError
from kdcompress.core.files import write_json_atomic
from kdcompress.core.values import control_character, is_whole
from kdcompress.deploy.preprocessing import Preprocessing

MANIFEST = "manifest.json"
FORMAT = "kdcompress-run/2"
READABLE = ("kdcompress-run/1", FORMAT)


@dataclass
class ModelEntry:
    """One model of a run: its ONNX file and what it scored; `details` holds the rest (training record, export check...)."""

    architecture: str
    onnx: str  # file name inside the run folder
    parameters: int
    onnx_bytes: int
    test_accuracy: float
    test_correct: int
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The manifest form: the named fields first, then the details."""
        return {**{name: getattr(self, name) for name in _MODEL_FIELDS}, **self.details}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "ModelEntry":
        """Read the manifest form; a KdcError names a missing field, one of the wrong type, or a file outside the run."""
        _require(data, _MODEL_FIELDS, where)
        for name, kinds in _MODEL_TYPES.items():
            _check_type(data[name], kinds, f"{where}: {name}")
        _check_file(data["onnx"], f"{where}: onnx")
        digest = data.get("sha256")
        if digest is not None and not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            _damaged(f"{where}: sha256 is {_shown(digest)}, not a SHA-256 in hex")
        return cls(**{name: data[name] for name in _MODEL_FIELDS}, details={k: v for k, v in data.items() if k not in _MODEL_FIELDS})


@dataclass
class DatasetInfo:
    """The dataset a run was trained on."""

    name: str
    classes: list[str]
    counts: dict[str, int]  # images per split: train, val, test
    source: str = ""
    fingerprint: str | None = None
    # The training images' sizes ('WxH') before resizing, most common first, or ['various'] (preprocessing.source_shapes);
    # empty in runs made before it was recorded.
    source_sizes: list[str] = field(default_factory=list)
    # The training images' own colour channels (1, 3) before conversion; empty in runs made before it was recorded.
    source_channels: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "DatasetInfo":
        _require(data, ("name", "classes", "counts"), where)
        _check_type(data["name"], (str,), f"{where}: name")
        classes, counts = data["classes"], data["counts"]
        if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
            _damaged(f"{where}: classes is {_shown(classes)}, not a list of at least 2 class names")
        for name in classes:
            _check_plain(name, f"{where}: class name")
        if not isinstance(counts, dict) or not all(is_whole(v) for v in counts.values()):
            _damaged(f"{where}: counts is {_shown(counts)}, not image counts per split")
        sizes = data.get("source_sizes", [])
        if not isinstance(sizes, list) or not all(isinstance(s, str) for s in sizes):
            _damaged(f"{where}: source_sizes is {_shown(sizes)}, not a list of image sizes")
        seen = data.get("source_channels", [])
        if not isinstance(seen, list) or not all(is_whole(c) and c in (1, 3) for c in seen):
            _damaged(f"{where}: source_channels is {_shown(seen)}, not a list of channel counts (1, 3)")
        if data.get("fingerprint") is not None:
            _check_type(data["fingerprint"], (str,), f"{where}: fingerprint")
        return cls(data["name"], list(classes), dict(counts), str(data.get("source", "")), data.get("fingerprint"), list(sizes), list(seen))


@dataclass
class Manifest:
    """manifest.json: which models a run holds, their classes and preprocessing, how they were made and scored.

    Format 2 adds `training` (device, precision, how the teacher's outputs reached the student) to
    format 1; format 1 manifests are read with an empty `training`.
    """

    run: str
    dataset: DatasetInfo
    preprocessing: Preprocessing
    models: dict[str, ModelEntry]
    files: dict[str, str]  # test_set, calibration_set, history: file names inside the run folder
    warnings: list[str] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # created, objective, config, device, environment
    format: str = FORMAT

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to manifest.json."""
        return {
            "format": self.format,
            "run": self.run,
            "dataset": self.dataset.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "models": {role: entry.to_dict() for role, entry in self.models.items()},
            "files": self.files,
            "warnings": self.warnings,
            "training": self.training,
            **self.details,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST) -> "Manifest":
        """Read a format 1 or 2 manifest; a KdcError for any other format or a missing field."""
        if not isinstance(data, dict) or data.get("format") not in READABLE:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise KdcError(f"{where} is not a kdcompress run manifest (format {found!r}; this version reads {', '.join(READABLE)})")
        _require(data, ("run", "dataset", "preprocessing", "models", "files"), where)
        try:
            preprocessing = Preprocessing.from_dict(data["preprocessing"])
        except (KeyError, TypeError, ValueError) as exc:
            raise KdcError(f"{where}: its preprocessing is incomplete ({exc}): the run folder is damaged; run kdc compress again") from None
        if not isinstance(data["models"], dict) or not data["models"]:
            raise KdcError(f"{where} lists no models: the run folder is damaged; run kdc compress again")
        for role in data["models"]:  # a role names the files quantize writes: only the names kdc makes
            if not roles.is_role(role):
                _damaged(f"{where}: model {_shown(role)} is not a model name kdc makes (teacher, or baseline, student, "
                         f"control, int8, fp16, each optionally -ARCH)")  # fmt: skip
        files = data["files"]
        if not isinstance(files, dict) or not all(isinstance(k, str) for k in files):
            _damaged(f"{where}: files is {_shown(files)}, not file names by role")
        for key, name in files.items():
            _check_file(name, f"{where}: files.{key}")
        for key in ("warnings",):
            if not isinstance(data.get(key, []), list):
                _damaged(f"{where}: {key} is {_shown(data[key])}, not a list")
        if not isinstance(data.get("training", {}), dict):
            _damaged(f"{where}: training is {_shown(data['training'])}, not a record")
        _check_type(data["run"], (str,), f"{where}: run")
        _check_plain(data["run"], f"{where}: run")
        known = {"format", "run", "dataset", "preprocessing", "models", "files", "warnings", "training"}
        return cls(
            run=data["run"],
            dataset=DatasetInfo.from_dict(data["dataset"], f"{where} (dataset)"),
            preprocessing=preprocessing,
            models={role: ModelEntry.from_dict(entry, f"{where} (model {role})") for role, entry in data["models"].items()},
            files=dict(data["files"]),
            warnings=list(data.get("warnings", [])),
            training=dict(data.get("training", {})),
            details={k: v for k, v in data.items() if k not in known},
            format=data["format"],
        )


_MODEL_FIELDS = ("architecture", "onnx", "parameters", "onnx_bytes", "test_accuracy", "test_correct")
_MODEL_TYPES: dict[str, tuple[type, ...]] = {
    "architecture": (str,),
    "onnx": (str,),
    "parameters": (int,),
    "onnx_bytes": (int,),
    "test_accuracy": (int, float),
    "test_correct": (int, type(None)),
}
DAMAGED = "the run folder is damaged; run kdc compress again"


def _damaged(problem: str) -> None:
    raise KdcError(f"{problem}: {DAMAGED}")


def _shown(value: Any) -> str:
    """A manifest value as an error line shows it: short, and with its type."""
    text = repr(value)
    return f"{text[:40]}..." if len(text) > 43 else text


def _check_type(value: Any, kinds: tuple[type, ...], where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, kinds):
        words = {"str": "text", "int": "a whole number", "float": "a number"}
        wanted = " or ".join("null" if k is type(None) else words.get(k.__name__, k.__name__) for k in kinds)
        _damaged(f"{where} is {_shown(value)}, not {wanted}")


def _check_plain(text: str, where: str) -> None:
    """Text a manifest gives for reports (the run's name, a class name): no control characters, no line breaks. A
    newline in a name written into benchmark.md would start a line of its own there (a command, if that file were
    ever run as a script)."""
    bad = control_character(text)
    if bad is not None:
        _damaged(f"{where} {_shown(text)} holds a control character ({bad!r})")


def _check_file(name: Any, where: str) -> None:
    """A file named by a manifest: a plain relative path inside the run folder (no absolute path, no '..')."""
    if not isinstance(name, str) or not name:
        _damaged(f"{where} is {_shown(name)}, not a file name")
    path = Path(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        _damaged(f"{where} is {name!r}, a path outside the run folder")


def run_file(run_dir: str | Path, name: str) -> Path:
    """The file a manifest names, inside its run folder; a KdcError when it (or a link on the way) points outside."""
    run_dir = Path(run_dir)
    path = run_dir / name
    try:
        inside = path.resolve().is_relative_to(run_dir.resolve())
    except (OSError, RuntimeError):  # a link loop
        inside = False
    if not inside:
        _damaged(f"{path} leads outside its run folder {run_dir}")
    return path


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, in hex (what the manifest records for each model file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_file(run_dir: str | Path, role: str, entry: ModelEntry) -> "ModelFile":
    """The ONNX file of a model, inside its run folder and as the manifest recorded it (its SHA-256, where recorded):
    its bytes, read once and hashed, which are what the runtimes load (a file swapped after the check is never run).

    A file changed since it was written (swapped, re-exported, damaged) is refused in one line naming it; a user who
    changed it on purpose records the new hash with `kdc benchmark RUN --rehash`.
    """
    path = run_file(run_dir, entry.onnx)
    data = _read_model(path, role)
    recorded = entry.details.get("sha256")
    if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
        raise KdcError(
            f"{path} ({role}) is not the file this run wrote: its SHA-256 differs from the manifest's. Restore it, or, if "
            f"you changed it on purpose, record it with `kdc benchmark {run_dir} --rehash`"
        )
    return ModelFile(path, data)


@dataclass(frozen=True)
class ModelFile:
    """A model file of a run and the bytes of it that were checked against the manifest: runtimes load `data`, so a
    file swapped after the check is never what runs; `path` names it in messages and reaches tools that need a file."""

    path: Path
    data: bytes = field(repr=False)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name


def model_source(model: "str | Path | ModelFile") -> str | bytes:
    """What a runtime loads: a ModelFile's checked bytes, or a plain path as text."""
    return model.data if isinstance(model, ModelFile) else str(model)


def _read_model(path: Path, role: str) -> bytes:
    """A model file's bytes: a regular file (no FIFO or device behind a name), one line when it is missing or unreadable."""
    import stat

    try:
        info = path.stat()
    except FileNotFoundError:
        raise KdcError(f"{path} ({role}) is missing: the run folder is incomplete; run kdc compress again") from None
    except OSError as exc:
        raise KdcError(f"{path} ({role}) is unreadable ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise KdcError(f"{path} ({role}) is not a regular file: the run folder is damaged; run kdc compress again")
    try:
        return path.read_bytes()
    except MemoryError:
        raise KdcError(f"not enough memory to read {path} ({info.st_size / 1e6:.0f} MB): free memory or raise the limit") from None
    except OSError as exc:
        raise KdcError(f"{path} ({role}) is unreadable ({exc.strerror or exc})") from None


def rehash(run_dir: str | Path) -> list[str]:
    """Record the SHA-256 of every model file of a run in its manifest; the roles whose file had changed. Only files
    that load as ONNX models are recorded: a damaged one is refused in one line and nothing is rehashed, so the hash
    of the original stays and restoring it works. The caller holds the run's lock (runs.benchmark)."""
    import onnx

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)  # read under the lock: what another command added is kept
    changed = []
    for role, entry in manifest.models.items():
        path = run_file(run_dir, entry.onnx)
        data = _read_model(path, role)
        try:
            onnx.load_model_from_string(data)
        except Exception as exc:  # protobuf's DecodeError and friends
            raise KdcError(f"{path} ({role}) is not a readable ONNX model ({type(exc).__name__}): restore it or export it "
                           f"again; nothing was rehashed") from None  # fmt: skip
        digest = hashlib.sha256(data).hexdigest()
        path = run_file(run_dir, entry.onnx)
        if entry.details.get("sha256") != digest:
            changed.append(role)
        entry.details["sha256"] = digest
        entry.onnx_bytes = len(data)
    write_manifest(run_dir, manifest)
    return changed


def _require(data: Any, names: tuple[str, ...], where: str) -> None:
    missing = [name for name in names if not isinstance(data, dict) or name not in data]
    if missing:
        raise KdcError(f"{where} is missing {', '.join(missing)}: the run folder is damaged; run kdc compress again")


MAX_RUN_JSON = 64 << 20  # a manifest or benchmark.json is kilobytes to a few MB; anything larger is not one


def read_run_json(run_dir: Path, name: str, remedy: str = DAMAGED) -> Any:
    """A JSON file of a run folder, read as every run file is: a regular file inside the run (no link out of it, no
    FIFO or device), at most MAX_RUN_JSON bytes, nesting within Python's limits; a KdcError naming what is wrong."""
    import stat

    path = run_file(run_dir, name)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise KdcError(f"{path} is not a regular file: {remedy}")
        if info.st_size > MAX_RUN_JSON:
            raise KdcError(f"{path} is larger than {MAX_RUN_JSON >> 20} MB, too large to be kdc's: {remedy}")
        with open(path, "rb") as handle:
            return json.loads(handle.read(MAX_RUN_JSON + 1).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, MemoryError) as exc:
        raise KdcError(f"cannot read {path} ({type(exc).__name__}: {str(exc)[:80]}): {remedy}") from None


def read_manifest(run_dir: str | Path) -> Manifest:
    """The manifest of a finished run, or a KdcError saying why there is none."""
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST
    if not run_dir.is_dir():
        raise KdcError(f"run folder not found: {run_dir}")
    if not path.is_file():
        raise KdcError(f"{run_dir} has no {MANIFEST}: it is not a finished kdc compress run")
    data = read_run_json(run_dir, MANIFEST)
    return Manifest.from_dict(data, str(path))


def write_manifest(run_dir: Path, manifest: Manifest) -> None:
    """Write manifest.json atomically (a run folder is finished once it has one)."""
    write_json_atomic(run_dir / MANIFEST, manifest.to_dict())


def load_images(run_dir: Path, manifest: Manifest, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a split saved in a run folder (key 'test_set' or 'calibration_set'), checked against the
    manifest: uint8 images of its channels and size, as many labels as images, each one of its classes."""
    images, labels = _read_images(run_dir, manifest, key)
    prep, classes = manifest.preprocessing, len(manifest.dataset.classes)
    path = run_dir / manifest.files[key]
    shape = (prep.channels, prep.image_size, prep.image_size)
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != shape:
        _damaged(f"{path} holds images of shape {tuple(images.shape)} ({images.dtype}), not N x {' x '.join(map(str, shape))} uint8")
    if labels.ndim != 1 or len(labels) != len(images):
        _damaged(f"{path} holds {len(images)} images and {labels.size} labels, not one label per image")
    if len(images) == 0:
        _damaged(f"{path} holds no images")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= classes:
        _damaged(f"{path} holds labels outside 0..{classes - 1} (the run's {classes} classes)")
    return images, labels


def _read_images(run_dir: Path, manifest: Manifest, key: str) -> tuple[np.ndarray, np.ndarray]:
    if key not in manifest.files:
        raise KdcError(f"the manifest of {run_dir} names no {key} file: the run folder is damaged; run kdc compress again")
    path = run_file(run_dir, manifest.files[key])
    if not path.is_file():
        raise KdcError(f"{path} is missing: the run folder is incomplete; run kdc compress again")
    try:
        with np.load(path, allow_pickle=False) as data:
            return np.asarray(data["images"]), np.asarray(data["labels"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise KdcError(f"{path} is unreadable ({exc}): the run folder is damaged; run kdc compress again") from None
