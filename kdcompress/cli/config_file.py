"""`--config FILE.yaml`: a file of option values that the command line overrides.

The keys are the command's option names (`teacher-epochs` or `teacher_epochs`, `T` or `temperature`); a list
stands for a comma-separated grid (`temperature: [1, 4]` in a sweep). The file fills click's default map before
any other option is read, so an option given on the command line wins over the file, and the file over the
built-in default. Every run writes its resolved settings in this form (`config.yaml` in its folder).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Optional

import typer

from kdcompress.cli.output import fail
from kdcompress.core.files import read_yaml_mapping
from kdcompress.core.errors import KdcError


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
    try:
        settings = read_yaml_mapping(Path(value))
    except KdcError as exc:
        fail(str(exc))
    keys = option_keys(ctx.command)
    defaults: dict[str, Any] = {}
    for key, raw in settings.items():
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
