"""`--config FILE.yaml`: the file fills the options, the command line overrides it, a run's config.yaml reruns it."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from conftest import fails_cleanly, runner
from kdcompress.cli import app

PANELS = ("Data", "Teacher", "Students and distillation", "Training", "Hardware", "Output")


def _panels(help_text: str) -> dict[str, str]:
    """Panel title -> the text inside its box, from Rich's help output."""
    boxes = re.split(r"╭─ ([^─]+?) ─", help_text)
    return {title: body for title, body in zip(boxes[1::2], boxes[2::2])}


@pytest.mark.parametrize("command", ["compress", "sweep"])
def test_help_groups_the_options_in_panels(command):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0
    panels = _panels(result.output)
    assert [p for p in panels if p in PANELS] == list(PANELS)
    assert "--teacher-epochs" in panels["Teacher"] and "--alpha" in panels["Students and distillation"]
    assert "--nproc" in panels["Hardware"] and "--json" in panels["Output"] and "--dataset" in panels["Data"]
    assert re.search(r"│ --epochs ", panels["Training"]) and not re.search(r"│ --epochs ", panels["Teacher"])


def test_a_runs_config_yaml_runs_it_again(tiny_run, tmp_path):
    written = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert written["teacher"] == "test_efficientnet" and written["teacher-epochs"] == 2 and "out" not in written
    result = runner.invoke(app, ["compress", "--config", str(tiny_run / "config.yaml"), "--artifacts", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    again = json.loads(result.stdout)
    first = json.loads((tiny_run / "manifest.json").read_text())
    assert {k: v for k, v in again["config"].items() if k != "artifacts"} == {
        k: v for k, v in first["config"].items() if k != "artifacts"
    }
    assert again["config"]["artifacts"] == str(tmp_path)  # the command line won over the file
    assert {r: m["test_correct"] for r, m in again["models"].items()} == {r: m["test_correct"] for r, m in first["models"].items()}
    rerun = next(p for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert yaml.safe_load((rerun / "config.yaml").read_text()) == {**written, "artifacts": str(tmp_path)}


def test_the_command_line_overrides_the_file_and_the_file_the_defaults(tmp_path):
    config = tmp_path / "settings.yaml"
    config.write_text("seed: 99999999999\nteacher_epochs: 3\n")  # underscores are accepted as well as hyphens
    fails_cleanly(runner.invoke(app, ["compress", "--config", str(config)]), "--seed must be between 0 and 4294967295, got 99999999999")
    result = runner.invoke(app, ["compress", "-c", str(config), "--seed", "88888888888"])
    fails_cleanly(result, "got 88888888888")


def test_a_sweep_reads_its_grid_from_the_file_and_its_config_yaml_resumes_it(tiny_run, tmp_path):
    config = tmp_path / "grid.yaml"
    config.write_text("T: [1, 1]\n")
    fails_cleanly(runner.invoke(app, ["sweep", "--config", str(config)]), "--T lists a value twice: 1, 1")
    weights = str(tiny_run / "checkpoints" / "teacher.pt")
    settings = {"teacher": "test_efficientnet", "student": "test_resnet", "image-size": 16, "device": "cpu", "epochs": 1}
    config.write_text(yaml.safe_dump({**settings, "temperature": [4], "alpha": [0.5], "beta": [0.0], "seeds": 1}))
    out = tmp_path / "sweep"
    first = runner.invoke(app, ["sweep", "-c", str(config), "--teacher-weights", weights, "--out", str(out)])
    assert first.exit_code == 0, first.output
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["temperature"] == [4.0] and written["epochs"] == 1 and written["out"] == str(out)
    again = runner.invoke(app, ["sweep", "--config", str(out / "config.yaml")])
    assert again.exit_code == 0, again.output
    assert "3 of 3 trainings already done" in " ".join(again.output.split())


@pytest.mark.parametrize(
    "text, message",
    [
        ("teacher_epoch: 3\n", "'teacher_epoch' is not an option of kdc compress (did you mean teacher-epochs?)"),
        ("epochs: many\n", "settings.yaml: epochs:"),
        ("- 1\n- 2\n", "holds a list, not a mapping of option names to values"),
        ("epochs: [1\n", "is not valid YAML at line 2"),
        ("config: other.yaml\n", "'config' is not an option of kdc compress"),
        ("nproc: 2\n", "give --nproc on the command line"),
    ],
)
def test_a_bad_config_file_is_one_line(tmp_path, text, message):
    config = tmp_path / "settings.yaml"
    config.write_text(text)
    fails_cleanly(runner.invoke(app, ["compress", "--config", str(config)]), message)


def test_a_missing_config_file_is_one_line(tmp_path):
    fails_cleanly(runner.invoke(app, ["compress", "--config", str(tmp_path / "nope.yaml")]), "nope.yaml not found")
    fails_cleanly(runner.invoke(app, ["sweep", "--config", str(tmp_path)]), "is a folder")


# --config's failures: one line each.


def test_a_yaml_alias_bomb_and_an_oversized_file_are_refused_at_once(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb.write_text("\n".join(levels) + "\nepochs: 1\n")
    fails_cleanly(runner.invoke(app, ["compress", "--config", str(bomb)]), "uses YAML aliases (*name)")
    big = tmp_path / "big.yaml"
    big.write_text("".join(f"key{i}: {i}\n" for i in range(120_000)))
    fails_cleanly(runner.invoke(app, ["compress", "--config", str(big)]), "is larger than 1 MB")


def test_a_boolean_from_the_file_can_be_turned_off_and_a_list_is_no_boolean(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("int8: true\nstream: true\n")
    result = runner.invoke(app, ["compress", "--config", str(config), "--no-int8", "--no-stream", "--epochs", "0"])
    fails_cleanly(result, "--epochs must be between")  # parsed: the --no- forms exist and the file's booleans are taken
    config.write_text("retrain-teacher: [1]\n")
    fails_cleanly(runner.invoke(app, ["compress", "--config", str(config)]), "retrain-teacher takes true or false, not [1]")
    from typer.main import get_command

    for command in ("compress", "sweep"):
        flags = {flag for param in get_command(app).commands[command].params for flag in param.secondary_opts}
        assert {"--no-pretrained", "--no-pretrained-student", "--no-retrain-teacher", "--no-stream"} <= flags
    assert "--no-int8" in {f for param in get_command(app).commands["compress"].params for f in param.secondary_opts}


def test_config_is_read_from_a_pipe(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "kdcompress", "compress", "--config", "/dev/stdin"], input="alpha: 1.5\n", capture_output=True, text=True
    )
    assert done.returncode == 1 and "--alpha must be between 0 and 1, got 1.5" in done.stderr and "not found" not in done.stderr
