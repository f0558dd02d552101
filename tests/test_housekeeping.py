"""Housekeeping a test holds: no comment or docstring sends the reader to a module, file or function that does not
exist, no issue number ("issue", a hash, digits: they belong in commit messages and benchmarks/README.md), and a
lint-clean tree."""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from conftest import REPO

LAYERS = ("core", "deploy", "report", "data", "train", "runs", "cli")
FILE_ENDINGS = ("py", "yaml", "yml", "json", "md", "png", "onnx", "npz", "pt", "txt", "toml", "sh", "cost", "lock", "pte")
ISSUE = re.compile(r"\bissue\s#\d+", re.IGNORECASE)
# layer/module(.py)(:name) or layer.module(.name), and kdcompress.layer.module(.name)
QUALIFIED = re.compile(r"(?<![\w./-])(?:kdcompress\.)?(" + "|".join(LAYERS) + r")[./](\w+)(?:\.py)?(?:[.:]([A-Za-z_]\w*))?")
SHORT = re.compile(r"(?<![\w./-])([a-z_]\w*)\.([A-Za-z_]\w*)\b")
PY_FILE = re.compile(r"(?<![\w/.-])(\w+)\.py\b")


def prose(path: Path) -> list[tuple[int, str]]:
    """The comments and docstrings of a Python file, with their lines."""
    source = path.read_text()
    found = [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                found.append((node.body[0].lineno, doc))
    return found


def defined_names(path: Path) -> set[str]:
    """What a module defines at its top level (functions, classes, assignments, imports)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def stale_references(package: Path, read: list[Path], files: set[str]) -> list[str]:
    """Every reference in the comments and docstrings of `read` that does not resolve, one line each.

    package: the package folder whose modules are referred to (layer/module.py, layer.module.name, module.name where
    module is one of its module names); files: every file name that exists, for a bare file name ending in .py."""
    modules = {p.relative_to(package).with_suffix("").as_posix(): p for p in package.rglob("*.py")}
    short = {}
    for name in modules:
        short.setdefault(name.rsplit("/", 1)[-1], []).append(name)
    names = {name: defined_names(path) for name, path in modules.items()}
    bad = []
    for path in read:
        for line, text in prose(path):
            where = f"{path.relative_to(package.parent)}:{line}"
            if ISSUE.search(text):
                bad.append(f"{where}: {ISSUE.search(text).group(0)}")
            for match in QUALIFIED.finditer(text):
                layer, module, attr = match.groups()
                if attr in FILE_ENDINGS:  # runs/NAME.json: a file kdc writes, not a module
                    continue
                if f"{layer}/{module}" in modules:
                    if attr and attr not in names[f"{layer}/{module}"]:
                        bad.append(f"{where}: {match.group(0)} ({layer}/{module}.py defines no {attr})")
                elif f"{layer}/{module}/__init__" not in modules and module not in names.get(f"{layer}/__init__", set()):
                    bad.append(f"{where}: {match.group(0)} (no module {layer}/{module}.py)")
            for match in SHORT.finditer(text):
                module, attr = match.groups()
                if module in short and len(short[module]) == 1 and module not in LAYERS and attr not in FILE_ENDINGS:
                    if attr not in names[short[module][0]]:
                        bad.append(f"{where}: {match.group(0)} ({short[module][0]}.py defines no {attr})")
            for match in PY_FILE.finditer(text):
                if f"{match.group(1)}.py" not in files:
                    bad.append(f"{where}: {match.group(0)} (no such file)")
    return bad


def _tree() -> tuple[Path, list[Path], set[str]]:
    package = REPO / "kdcompress"
    read = sorted(package.rglob("*.py")) + sorted((REPO / "tests").glob("*.py"))
    files = {p.name for folder in ("kdcompress", "tests", "benchmarks", "docs", ".ci") for p in (REPO / folder).rglob("*") if p.is_file()}
    return package, read, files


def test_no_comment_or_docstring_names_what_does_not_exist():
    package, read, files = _tree()
    assert stale_references(package, read, files) == []


def test_the_check_finds_a_planted_stale_reference(tmp_path):
    package = tmp_path / "pkg"
    (package / "train").mkdir(parents=True)
    (package / "train" / "seed.py").write_text('"""One seed."""\n\n\ndef train_one():\n    """Calls fair.prepare."""\n')
    (package / "train" / "fair.py").write_text("def prepare():\n    pass  # see train/seed.py and seed.train_one\n")
    planted = package / "runs.py"
    planted.write_text(
        '"""Runs: see train/pipeline.py, train.seed.train_two, seed.train_one, seed.gone and distributed.py (issue' ' #12)."""\n'
    )
    found = stale_references(package, sorted(package.rglob("*.py")), {"seed.py", "fair.py", "runs.py"})
    said = " ".join(found)
    assert len(found) == 5, found
    assert "train/pipeline" in said and "train_two" in said and "seed.gone" in said and "distributed.py" in said and "issue" " #12" in said


def test_the_tree_is_lint_clean():
    pytest.importorskip("ruff", reason="ruff is a dev dependency: pip install -e '.[dev]'")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
