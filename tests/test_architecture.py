"""The house rules a newcomer relies on: no import circles (lazy and type-only imports count), the
layers of classifiers/ import downwards only, and no module grows past 400 lines."""
import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("feature_extractor", "classifiers", "service", "commands")
MAX_LINES = 400


def modules() -> dict[str, Path]:
    found = {"cli": REPO / "cli.py"}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its body (functions and TYPE_CHECKING
    blocks included)."""
    mods = modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets = [module] + [f"{module}.{a.name}" for a in node.names]
            else:
                continue
            edges[name].update(t for t in targets if t in mods and t != name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_classifiers_layers_import_downwards():
    """estimators < records < presentation < workflows: presentation never reads workflows, records
    never read presentation or workflows, estimators read none of them."""
    below = {"classifiers.estimators": (), "classifiers.records": ("classifiers.estimators",),
             "classifiers.presentation": ("classifiers.estimators", "classifiers.records")}
    layers = ("classifiers.estimators", "classifiers.records", "classifiers.presentation", "classifiers.workflows")
    wrong = []
    for module, targets in import_graph().items():
        layer = next((name for name in below if module == name or module.startswith(name + ".")), None)
        if layer is None:
            continue
        for target in targets:
            other = next((name for name in layers if target == name or target.startswith(name + ".")), None)
            if other not in (None, layer, *below[layer]):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_no_module_over_400_lines():
    long = [f"{path.relative_to(REPO)} ({n})" for path in [REPO / "cli.py", *REPO.glob("*/**/*.py")]
            if not path.relative_to(REPO).parts[0] in ("bench", ".venv", "build")
            and (n := len(path.read_text().splitlines())) > MAX_LINES]
    assert long == []
