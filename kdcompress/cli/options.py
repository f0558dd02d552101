"""The options of `kdc compress` and `kdc sweep`, generated from CompressConfig's fields (train/config.py), and
`--config FILE.yaml`, a file of option values that the command line overrides.

A setting is one field: its flag, help panel, help, range and what a sweep does with it are stated there, and the
commands' signatures are built from them (`with_settings`), so neither is written out by hand. Importing this module
imports no torch or onnxruntime, so `kdc --help` stays instant.

Config files: the keys are the command's option names (`teacher-epochs` or `teacher_epochs`, `T` or `temperature`);
a list stands for a comma-separated grid (`temperature: [1, 4]` in a sweep). The file fills click's default map
before any other option is read, so an option given on the command line wins over the file, and the file over the
built-in default. Every run writes its resolved settings in this form (`config.yaml` in its folder).
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from kdcompress.cli.output import fail
from kdcompress.core.errors import KdcError
from kdcompress.data.specs import DATASETS
from kdcompress.train.config import COMPRESS_ONLY, GRID, HARDWARE, OUTPUT, SWEEP_SEEDS, TRAINING, CompressConfig, Setting, settings
from kdcompress.train.losses import KD_LOSSES

COMMANDS = ("compress", "sweep")


def per_dataset(field: str, unit: str = "") -> str:
    """'digits 16, cifar3 32, ...': a field's default for each dataset, read from data/specs.py (never restated)."""
    return ", ".join(f"{name} {getattr(spec, field)}{unit}" for name, spec in DATASETS.items())


def _setting_parameter(name: str, default: Any, how: Setting, annotation: Any) -> inspect.Parameter:
    """One generated option: the field's default, flags, panel and help (with its per-dataset defaults)."""
    flags = how.flag_names(name)
    if annotation is bool and len(flags) == 1:
        flags = (f"{flags[0]}/--no-{flags[0][2:]}",)
    help = how.help + (f" Default per dataset: {per_dataset(how.per_dataset, how.unit)}." if how.per_dataset else "")
    if how.path:
        annotation, default = Optional[Path], (Path(default) if default is not None else None)
    elif default is None:
        annotation = Optional[annotation]
    option = typer.Option(default, *flags, help=help, rich_help_panel=how.panel)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def _grid_parameter(name: str, how: Setting) -> inspect.Parameter:
    """A sweep's grid option in place of a GRID setting: the same flags, a comma-separated list of values."""
    text = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in how.grid)
    listed = f" ({','.join(KD_LOSSES)})" if name == "kd_loss" else ""
    option = typer.Option(text, *how.flag_names(name), help=f"Values to try, comma-separated{listed}. {how.help}", rich_help_panel=how.panel)
    return inspect.Parameter(GRID_PARAMETER[name], inspect.Parameter.KEYWORD_ONLY, default=option, annotation=str)


GRID_PARAMETER = {"temperature": "temperatures", "alpha": "alphas", "beta": "betas", "kd_loss": "kd_losses"}


def with_settings(command: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command's function the signature typer reads: ctx, --config, an option per CompressConfig field that
    the command takes (a sweep's grid settings as lists), then the function's own keyword parameters. The function
    receives the settings as **kwargs; `compress_config(ctx.params)` makes them a CompressConfig."""
    assert command in COMMANDS

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(function, eval_str=True)
        hints = typing_hints(CompressConfig)
        generated = [inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, default=CONFIG, annotation=Optional[Path])]
        for name, (default, how) in settings().items():
            if command == "sweep" and how.sweep == GRID:
                generated.append(_grid_parameter(name, how))
            elif command == "compress" or how.sweep != COMPRESS_ONLY:
                generated.append(_setting_parameter(name, default, how, hints[name]))
        first = [p for p in own.parameters.values() if p.kind == p.POSITIONAL_OR_KEYWORD and p.name == "ctx"]
        rest = [p.replace(kind=p.KEYWORD_ONLY) for p in own.parameters.values() if p.kind not in (p.VAR_KEYWORD,) and p.name != "ctx"]
        function.__signature__ = own.replace(parameters=first + generated + rest)  # type: ignore[attr-defined]
        return function

    return decorate


def typing_hints(cls: type) -> dict[str, Any]:
    """A dataclass's field types as typer takes them: 'int | None' -> int (the Optional is added where the default is None)."""
    import typing

    hints = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hints[name] = args[0] if args else hint
    return hints


def path_text(value: Optional[Path]) -> Optional[str]:
    """A path option as the config dataclasses hold it (a string, or None)."""
    return str(value) if value is not None else None


def compress_config(params: dict[str, Any], leave_out: tuple[str, ...] = ()) -> CompressConfig:
    """The CompressConfig of a command's parsed parameters (click's ctx.params): every parameter named like one of
    its fields, paths as text. One construction for compress and sweep."""
    fields = settings()
    values = {name: path_text(v) if isinstance(v, Path) else v for name, v in params.items() if name in fields and name not in leave_out}
    return CompressConfig(**values)


SEEDS = typer.Option(
    SWEEP_SEEDS, "--seeds", rich_help_panel=TRAINING, help="How many seeds (--seed, --seed + 1, ...): each gets its own baseline."
)
NPROC = typer.Option(
    1, "--nproc", min=1, rich_help_panel=HARDWARE, help="Processes to train with on this machine, one per GPU (or CPU share): starts torchrun "
    "--standalone --nproc-per-node N for you. For several machines call torchrun yourself (see the README)."
)
JSON = typer.Option(False, "--json", rich_help_panel=OUTPUT, help="Print the result as JSON on stdout instead of the table.")


def names(text: str) -> tuple[str, ...]:
    """'kl, dist' -> ('kl', 'dist'); each is checked where the config is resolved."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def numbers(flag: str, text: str) -> tuple[float, ...]:
    """'1,4,8' -> (1.0, 4.0, 8.0); anything else is a one-line error."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise KdcError(f"{flag} takes comma-separated numbers such as 1,4,8, got '{text}'") from None


def option_keys(command: Any) -> dict[str, Any]:
    """Every key a config file may use for this command -> its option (long flag names, and the parameter name).

    command is the click command (typer's own copy of click in recent typer versions, hence no click types here).
    """
    keys: dict[str, Any] = {}
    for param in command.params:
        flags = [flag[2:] for flag in param.opts if flag.startswith("--")]
        if not flags or param.name in ("config_file", "help"):  # an argument, or --config itself
            continue
        keys.update({flag: param for flag in flags})
        keys[(param.name or "").replace("_", "-")] = param
    return keys


def load_config(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """The --config callback (eager): check the file's keys and values, then make them the command's defaults."""
    if value is None or ctx.resilient_parsing:
        return value
    from kdcompress.core.files import read_yaml_mapping

    try:
        values = read_yaml_mapping(Path(value))
    except KdcError as exc:
        fail(str(exc))
    keys = option_keys(ctx.command)
    defaults: dict[str, Any] = {}
    for key, raw in values.items():
        name = str(key).replace("_", "-")
        option = keys.get(name)
        if option is None:
            close = difflib.get_close_matches(name, list(keys), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            fail(
                f"{value}: '{key}' is not an option of kdc {ctx.command.name}{hint}; the keys are the option names "
                f"that `kdc {ctx.command.name} --help` lists"
            )
        if option.name == "nproc":  # the processes torchrun starts re-read the file: they would each launch again
            fail(f"{value}: nproc says how this machine starts the run, not what it trains: give --nproc on the command line")
        if getattr(option, "is_flag", False) and raw is not None and not isinstance(raw, bool):
            fail(f"{value}: {key} takes true or false, not {raw!r}")
        if isinstance(raw, (list, tuple)):  # a grid: the comma-separated text the option takes
            raw = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in raw)
        if raw is not None:
            try:
                option.process_value(ctx, raw)
            except typer.BadParameter as exc:
                fail(f"{value}: {key}: {exc.message}")
        defaults[option.name] = raw  # type: ignore[index]
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


CONFIG = typer.Option(
    None, "--config", "-c", is_eager=True, callback=load_config,
    help="A YAML file of option values (keys: the option names, e.g. teacher-epochs: 60); options given on the "
    "command line override it. Every run folder holds its own config.yaml: --config RUN/config.yaml reproduces it.",
)  # fmt: skip
