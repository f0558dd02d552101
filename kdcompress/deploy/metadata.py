"""What every ONNX file kdc writes says about itself, in its own metadata (`metadata_props`).

Once a .onnx file is copied into an application without its run folder, its user would otherwise have to guess the
class order, the input size, mean and std and the resize rule (and guess wrong: "the app is less accurate than the
dashboard"). Each file carries them under `kdc.*` keys, JSON-encoded where they are not plain text:

- kdc.format: FORMAT, the version of these keys;
- kdc.classes: the class names in output order;
- kdc.preprocessing: `Preprocessing.to_dict()`: input size and channels, mean and std, the resize, colour and decoding
  rules, the layout and the formula;
- kdc.outputs: what the output is (logits, one per class: softmax gives probabilities);
- kdc.dataset, kdc.run, kdc.role: where it came from.

`kdc predict FILE.onnx IMAGE` reads them (`read_metadata`) and needs no run folder. A file of an older run has none,
and is read as before, through its run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdcompress.core.errors import KdcError
from kdcompress.core.values import control_character
from kdcompress.deploy.preprocessing import Preprocessing

FORMAT = "kdcompress-onnx/1"
PREFIX = "kdc."
OUTPUTS = "logits: one unnormalised score per class, in kdc.classes order (softmax gives probabilities)"
MAX_CLASSES = 100_000  # a class list longer than this is not one kdc wrote


@dataclass(frozen=True)
class Described:
    """What a file's metadata says: enough to classify images with it alone."""

    classes: list[str]
    preprocessing: Preprocessing
    dataset: str
    run: str
    role: str


def file_metadata(classes: list[str], prep: Preprocessing, dataset: str, run: str, role: str) -> dict[str, str]:
    """The kdc.* keys of one model file."""
    return {
        f"{PREFIX}format": FORMAT,
        f"{PREFIX}classes": json.dumps(list(classes)),
        f"{PREFIX}preprocessing": json.dumps(prep.to_dict()),
        f"{PREFIX}outputs": OUTPUTS,
        f"{PREFIX}dataset": dataset,
        f"{PREFIX}run": run,
        f"{PREFIX}role": role,
    }


def stamp(path: Path, metadata: dict[str, str]) -> None:
    """Write metadata into the ONNX file at path (in place; its earlier kdc.* keys replaced, any other key kept)."""
    import onnx

    model = onnx.load(str(path))
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    for key, value in [*kept, *metadata.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def read_metadata(path: Path) -> Described | None:
    """What the file at path says about itself; None for a file without kdc's keys (another tool's, an older run's).

    A file that has the keys but not in a form kdc writes is refused in one line: its classes or preprocessing
    would otherwise be guessed."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise KdcError(f"{path} is not an ONNX file onnx can read ({type(exc).__name__}): pass a .onnx model kdc wrote") from None
    props = {p.key: p.value for p in model.metadata_props}
    if f"{PREFIX}format" not in props:
        return None
    if props[f"{PREFIX}format"] != FORMAT:
        raise KdcError(f"{path} describes itself in format {props[f'{PREFIX}format'][:40]!r}, not {FORMAT}: pass --run with its run folder")
    try:
        classes = json.loads(props[f"{PREFIX}classes"])
        prep = Preprocessing.from_dict(json.loads(props[f"{PREFIX}preprocessing"]))
        words = [props[f"{PREFIX}{key}"] for key in ("dataset", "run", "role")]
    except (KeyError, ValueError, TypeError) as exc:
        raise KdcError(f"{path}: its kdc metadata is damaged ({type(exc).__name__}): pass --run with its run folder") from None
    if not (isinstance(classes, list) and 2 <= len(classes) <= MAX_CLASSES and all(_plain(c) for c in classes)) or not all(map(_plain, words)):
        raise KdcError(f"{path}: its kdc metadata is damaged (classes or names not plain text): pass --run with its run folder")
    return Described(classes, prep, *words)


def _plain(value: Any) -> bool:
    """Non-empty text without control characters, as the manifest requires of the same names (a newline in a class
    name would forge lines of predict's output)."""
    return isinstance(value, str) and 0 < len(value) <= 1000 and control_character(value) is None
