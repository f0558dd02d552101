"""`kdc compress --from-sweep DIR`: compress with the cell a finished sweep chose on validation.

The sweep's results.json names that cell (`chosen`: T, alpha, beta, picked on validation accuracy
averaged over seeds, never on test) and the settings every one of its runs shared (data, models,
schedule, views, teacher recipe, first seed). compress takes both, so its run is the sweep's chosen
cell trained once more, on the same data with the same teacher, which it finds in the sweep's
teacher cache. An option given on the command line that contradicts the sweep is refused rather
than silently overridden either way; options the sweep does not fix (device, --out, --int8,
--control, ...) stay free.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from kdcompress.core.errors import KdcError
from kdcompress.core.files import read_json
from kdcompress.runs.sweep import SHARED_SETTINGS
from kdcompress.runs.sweep_grid import FORMAT
from kdcompress.train.config import CompressConfig

CELL = ("temperature", "alpha", "beta")
_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),)}
FIELD_TYPES = {  # each setting's allowed JSON types, from CompressConfig's annotations ("int | None" ...)
    f.name: tuple(t for part in str(f.type).split("|") for t in _TYPES.get(part.strip(), ())) for f in fields(CompressConfig)
}


def check_results(results: Any, path: Path) -> dict[str, Any]:
    """results.json's chosen cell and shared settings, each of the type compress takes; a KdcError naming the first that
    is not (a damaged or hand-edited file), before any of it reaches a configuration."""
    from kdcompress.train.losses import KD_LOSSES

    def bad(what: str, value: Any, wanted: str) -> KdcError:
        shown = repr(value) if len(repr(value)) < 40 else repr(value)[:37] + "..."
        return KdcError(f"--from-sweep: {path}: {what} is {shown}, not {wanted}: the sweep folder is damaged; run the sweep again")

    chosen, settings = results.get("chosen"), results.get("settings")
    if not isinstance(chosen, dict):
        raise bad("chosen", chosen, "a grid cell (T, alpha, beta)")
    for name in CELL:
        value = chosen.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(f"chosen.{name}", value, "a number")
    if chosen.get("kd_loss", "kl") not in KD_LOSSES:
        raise bad("chosen.kd_loss", chosen.get("kd_loss"), f"one of {', '.join(KD_LOSSES)}")
    if not isinstance(settings, dict):
        raise bad("settings", settings, "the sweep's settings")
    for name in SHARED_SETTINGS:
        if name not in settings:
            continue
        value, kinds = settings[name], FIELD_TYPES[name]
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            words = {int: "a whole number", float: "a number", str: "text", bool: "true or false", type(None): "null"}
            wanted = [words[float]] if float in kinds else [words[k] for k in kinds if k is not type(None)]
            raise bad(f"settings.{name}", value, " or ".join(wanted + (["null"] if type(None) in kinds else [])))
    return results


def sweep_results(folder: str | Path) -> dict[str, Any]:
    """A finished sweep's results.json, or a KdcError saying what is missing."""
    folder = Path(folder)
    path = folder / "results.json"
    if not folder.is_dir():
        raise KdcError(f"--from-sweep: sweep folder not found: {folder}")
    if not path.is_file():
        students = sorted(p.parent.name for p in folder.glob("*/results.json"))
        if students:
            choices = " or ".join(str(folder / s) for s in students)
            raise KdcError(f"--from-sweep: {folder} holds a sweep per student: pass one of them, {choices}")
        raise KdcError(f"--from-sweep: {folder} holds no results.json: run the sweep to its end first (running it again resumes it)")
    results = read_json(path, "run the same kdc sweep again to rewrite it")
    if not isinstance(results, dict) or results.get("format") != FORMAT or not isinstance(results.get("settings"), dict):
        raise KdcError(f"--from-sweep: {path} is not a kdc sweep's results file")
    if not results.get("chosen"):
        raise KdcError(f"--from-sweep: {path} names no cell chosen on validation (an older sweep): run that sweep again with this kdc")
    return check_results(results, path)


def with_sweep(config: CompressConfig, results: dict[str, Any] | None = None) -> CompressConfig:
    """config with the sweep's shared settings and chosen cell (config unchanged without --from-sweep).

    results: the sweep's results.json when the caller has read it already (`sweep_results`).
    """
    if not config.from_sweep:
        return config
    if results is None:
        results = sweep_results(config.from_sweep)
    settings, chosen = results["settings"], results["chosen"]
    wanted = {name: settings[name] for name in SHARED_SETTINGS if name in settings}
    wanted.update({name: float(chosen[name]) for name in CELL})
    wanted["kd_loss"] = str(chosen.get("kd_loss", "kl"))  # sweeps made before --kd-loss distilled with KL
    default = CompressConfig()
    conflicts = [
        f"{_flag(name)} {getattr(config, name)} (the sweep's: {value})"
        for name, value in wanted.items()
        if getattr(config, name) != getattr(default, name) and getattr(config, name) != value
    ]
    if conflicts:
        raise KdcError(
            f"--from-sweep takes its settings from {config.from_sweep}, and {'; '.join(conflicts)} "
            f"contradict{'s' if len(conflicts) == 1 else ''} them: drop {'that option' if len(conflicts) == 1 else 'those options'}, or --from-sweep"
        )
    return replace(config, **wanted)


def describe(config: CompressConfig, results: dict[str, Any]) -> str:
    """The info line a run made with --from-sweep starts with (results: the sweep's results.json)."""
    chosen = results["chosen"]
    val = f", mean validation accuracy {chosen['val_mean']:.1%}" if "val_mean" in chosen else ""
    return (
        f"--from-sweep: T {config.temperature:g}, alpha {config.alpha:g}, beta {config.beta:g}, KD loss {config.kd_loss}: the cell "
        f"{config.from_sweep} chose on validation{val}; its test result there: {chosen.get('words', 'not recorded')}"
    )


def check_same_data(config: CompressConfig, results: dict[str, Any], fingerprint: str) -> None:
    """Refuse data other than the sweep's (the chosen cell was chosen on that data; results: its results.json)."""
    recorded = results["settings"].get("data")
    if recorded and recorded != fingerprint:
        raise KdcError(
            f"--from-sweep: these images are not the ones {config.from_sweep} was swept on (data fingerprint {fingerprint}, "
            f"the sweep's {recorded}): pass the sweep's --data-dir (and --stream as the sweep had it)"
        )


def _flag(name: str) -> str:
    return "--T" if name == "temperature" else "--" + name.replace("_", "-")
