"""The dependency rules: common/ is pure ML and imports neither flwr, flwr_datasets, datasets nor
mlflow; the packages stack common/ < client/, server/ < simulations/ (client and server are peers
that share only common/'s vocabulary); one StudyConfig."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
FORBIDDEN = {"flwr", "flwr_datasets", "datasets", "mlflow"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_common_never_imports_flower_or_mlflow() -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & FORBIDDEN)
        for p in (ROOT / "common").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_common_loads_neither_at_runtime() -> None:
    modules = [p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
               for p in (ROOT / "common").rglob("*.py") if p.name != "__init__.py"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# common/'s layers, lowest first: a module imports only from its own layer or below (lazy imports
# inside functions count too), and the import graph has no cycle.
LAYERS = (
    ("common.config", "common.threads"),
    ("common.audio", "common.metrics", "common.corpora"),
    ("common.features",),
    ("common.views", "common.splits", "common.models", "common.synthesis", "common.privacy"),
    ("common.data",),
    ("common.trainers",),
    ("common.trainers.registry", "common.audit"),
    ("common.schema", "common.pipeline", "common.regimes", "common.attacks"),  # attacks: FedGAN's round
)


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    best = max((prefix for layer in LAYERS for prefix in layer if module == prefix or module.startswith(prefix + ".")),
               key=len, default=None)
    assert best is not None, f"{module} is in no layer of tests/test_architecture.py"
    return next(i for i, layer in enumerate(LAYERS) if best in layer)


def _common_graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in (ROOT / "common").rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            graph[module] |= {t for t in targets if t in modules and t != module}
    return graph


def test_common_imports_only_downward() -> None:
    graph = _common_graph()
    upward = sorted(f"{a} -> {b}" for a, deps in graph.items() if a != "common" for b in deps
                    if _layer(b) > _layer(a))
    assert upward == []


def test_common_import_graph_has_no_cycle() -> None:
    graph, done, path = _common_graph(), set(), []

    def visit(module: str) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(module):], module]))
        if module in done:
            return
        path.append(module)
        for dep in sorted(graph[module]):
            visit(dep)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_config_is_a_leaf() -> None:
    assert _common_graph()["common.config"] == set()


# The repository's packages, lowest first, and what each may import of the others (lazy imports
# inside functions count too). benchmarks/ and tests/ sit on top and may import anything.
PACKAGES = {"common": set(), "client": {"common"}, "server": {"common"}, "simulations": {"common", "client", "server"}}


def test_packages_import_only_the_layers_below() -> None:
    offenders = []
    for package, allowed in PACKAGES.items():
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                         else [])
                offenders += [f"{path.relative_to(ROOT)} imports {name}" for name in names
                              if name.split(".")[0] in PACKAGES and name.split(".")[0] not in allowed | {package}]
    assert offenders == []


def test_there_is_one_study_config() -> None:
    defined = [f"{p.relative_to(ROOT)}" for package in (*PACKAGES, "tests", "benchmarks")
               for p in (ROOT / package).rglob("*.py")
               for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
               if isinstance(node, ast.ClassDef) and node.name == "StudyConfig"]
    assert defined == ["common/schema.py"]
