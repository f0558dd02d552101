"""The layers hold: no import cycle, no import upwards, and the deployable side never touches torch.

Layers, lowest first (docs/design.md, Layers): core < deploy < report < data < train < runs < cli. A module may import
from its own layer and the ones below. Every import counts, the ones inside functions too: a lazy `import torch`
under deploy/ would still make `kdc benchmark` need torch.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

LAYERS = ("core", "deploy", "report", "data", "train", "runs", "cli")  # report reads deploy's types
NO_TORCH = ("core", "deploy", "report")  # what kdc benchmark, predict and quantize run on: onnxruntime alone
HEAVY = ("torch", "timm", "torchvision")


def imports(path: Path) -> list[tuple[str, int]]:
    """Every module the file at path imports (absolute names), with the line, lazy imports included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from kdcompress.train import losses` imports a module, `from kdcompress.train.loop import fit` a name:
            # list module.name and let module_graph walk up to the module that exists
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def module_graph(root: Path) -> dict[str, list[tuple[str, int]]]:
    """module -> the package's own modules it imports (with lines), for every .py under root (a package folder)."""
    names = {_name(p, root) for p in root.rglob("*.py")}
    graph = {}
    for path in sorted(root.rglob("*.py")):
        own = []
        for target, line in imports(path):
            while target and target not in names:  # kdcompress.train.loop.fit -> kdcompress.train.loop
                target = target.rpartition(".")[0]
            if target and target != _name(path, root):
                own.append((target, line))
        graph[_name(path, root)] = own
    return graph


def _name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int | None:
    """The layer of a module (None for the package's entry points: kdcompress, kdcompress.__main__)."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def violations(root: Path) -> list[str]:
    """Every broken rule under a package folder, one line each (empty when the layers hold)."""
    graph = module_graph(root)
    found = []
    for module, targets in graph.items():
        here = layer(module)
        if here is None and module.split(".")[-1] not in ("__main__",) and module != root.name:
            found.append(f"{module}: not inside any layer ({', '.join(LAYERS)})")
        for target, line in targets:
            there = layer(target)
            if here is not None and there is not None and there > here:
                found.append(f"{module}:{line} imports {target}, a higher layer ({LAYERS[there]} above {LAYERS[here]})")
    for module in graph:
        if layer(module) is not None and LAYERS[layer(module)] in NO_TORCH:
            path = root.parent / (module.replace(".", "/") + ".py")
            path = path if path.exists() else root.parent / module.replace(".", "/") / "__init__.py"
            for target, line in imports(path):
                if target.split(".")[0] in HEAVY:
                    found.append(f"{module}:{line} imports {target}: {LAYERS[layer(module)]} must run without torch")
    found += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return found


def cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules that import each other (depth-first search)."""
    edges = {m: sorted({t for t, _ in targets if t in graph}) for m, targets in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    found = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in edges[module]:
            if state.get(target) == 1:
                found.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
    return found


def test_the_package_keeps_its_layers():
    assert violations(REPO / "kdcompress") == []


def test_every_layer_is_a_package_with_modules():
    root = REPO / "kdcompress"
    assert sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(LAYERS)
    assert sorted(p.name for p in root.glob("*.py")) == ["__init__.py", "__main__.py"]


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "kdcompress"
    for name, text in {"__init__.py": "", **{f"{layer}/__init__.py": "" for layer in LAYERS}, **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_torch_import_under_deploy_breaks_the_layers(tmp_path):
    root = _package(tmp_path, {"deploy/speed.py": "def f():\n    import torch\n    return torch\n"})
    assert violations(root) == ["kdcompress.deploy.speed:2 imports torch: deploy must run without torch"]


def test_an_upward_import_and_a_cycle_break_the_layers(tmp_path):
    root = _package(
        tmp_path,
        {
            "core/a.py": "from kdcompress.train.loop import fit\n",
            "train/loop.py": "from kdcompress.core import a\nfit = 1\n",
            "cli/app.py": "from kdcompress.runs import compress\n",
            "runs/compress.py": "from kdcompress.cli.app import main\n",
        },
    )
    found = violations(root)
    assert "kdcompress.core.a:1 imports kdcompress.train.loop, a higher layer (train above core)" in found
    assert "kdcompress.runs.compress:1 imports kdcompress.cli.app, a higher layer (cli above runs)" in found
    assert "import cycle: kdcompress.cli.app -> kdcompress.runs.compress -> kdcompress.cli.app" in found
    assert "import cycle: kdcompress.core.a -> kdcompress.train.loop -> kdcompress.core.a" in found
