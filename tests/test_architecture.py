"""The house rules a newcomer relies on: no import circles (lazy and type-only imports count), the
layers of classifiers/ import downwards only, covidct_core/ imports no other package of the project,
no module grows past 400 lines nor a function past 60, every setting is declared once (no command
option repeats a declared setting, no module-level constant is defined in two modules), and no
docstring or comment names a module, function or attribute that does not exist."""
import ast
import io
import re
import tokenize
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("covidct_core", "feature_extractor", "classifiers", "service", "commands")
MAX_LINES = 400
MAX_FUNCTION_LINES = 60


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


def test_the_base_imports_no_other_package_of_the_project():
    wrong = [f"{module} -> {target}" for module, targets in import_graph().items() if module.startswith("covidct_core")
             for target in targets if not target.startswith("covidct_core")]
    assert wrong == []


def python_files(product_only: bool = True) -> list[Path]:
    """The product's modules (cli.py and the packages), or every Python file of the repository."""
    if product_only:
        return list(modules().values())
    return [p for p in REPO.rglob("*.py") if not any(x.startswith(".") or x == "build" for x in p.relative_to(REPO).parts)]


def test_no_function_over_60_lines():
    long = [f"{path.relative_to(REPO)}:{node.name} ({node.end_lineno - node.lineno + 1})"
            for path in python_files() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def declared_settings() -> set[str]:
    """The names of every field declared with settings_schema.setting() in the product."""
    names = set()
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.AnnAssign) and isinstance(node.value, ast.Call) and isinstance(node.target, ast.Name):
                func = node.value.func
                if getattr(func, "id", None) in ("setting", "_target_sensitivity"):
                    names.add(node.target.id)
    return names


def option_defaults(tree: ast.AST) -> list[tuple[str, object]]:
    """(parameter name, literal default) of each click.option call with a literal default."""
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "option"):
            continue
        default = next((k.value for k in node.keywords if k.arg == "default"), None)
        if not isinstance(default, ast.Constant) or default.value is None:
            continue
        texts = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        names = [s for s in texts if not s.startswith("-")] or [texts[0].lstrip("-").split("/")[0].replace("-", "_")]
        out.append((names[0], default.value))
    return out


def test_no_command_option_repeats_a_declared_setting():
    declared = declared_settings()
    assert {"batch_size", "engine", "port", "method", "error_rate"} <= declared  # the declarations are found
    repeated = [f"{path.relative_to(REPO)}: --{name} default {value!r}" for path in (REPO / "commands").glob("*.py")
                for name, value in option_defaults(ast.parse(path.read_text())) if name in declared]
    assert repeated == []


def test_the_option_check_finds_a_repeated_setting():
    tree = ast.parse('click.option("--batch-size", type=int, default=32)\nclick.option("--out", default="a.csv")')
    assert option_defaults(tree) == [("batch_size", 32), ("out", "a.csv")]


def module_constants(tree: ast.Module) -> list[str]:
    """UPPER_CASE names a module assigns at its top level (type variables aside)."""
    out = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if isinstance(getattr(node, "value", None), ast.Call) and getattr(node.value.func, "id", None) == "TypeVar":
            continue
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name) and re.fullmatch(r"_?[A-Z][A-Z0-9_]*", name.id):
                    out.append(name.id)
    return out


def test_no_module_level_constant_is_defined_twice():
    where = defaultdict(list)
    for path in python_files():
        for name in module_constants(ast.parse(path.read_text())):
            where[name].append(str(path.relative_to(REPO)))
    assert {name: paths for name, paths in where.items() if len(paths) > 1} == {}


FILE_NAME = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.py)\b")
DOTTED = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\.([A-Za-z_]\w*)\b")
NOT_ATTRIBUTES = {"py", "sh", "csv", "json", "h5", "png", "md", "txt", "gz", "nii", "joblib", "onnx", "html", "jpg",
                  "dcm", "zip", "yml", "cfg", "toml", "ctbl", "label", "seg"}


class Names:
    """What the repository's Python files define: each module's (and package's) top-level names, each
    class's attributes, and the product's public top-level definitions."""

    def __init__(self, files: list[Path]):
        self.modules, self.classes, self.product = defaultdict(set), defaultdict(set), set()
        self.paths = {str(p.relative_to(REPO)) for p in files}
        for path in files:
            tree = ast.parse(path.read_text())
            name = path.parent.name if path.stem == "__init__" else path.stem
            self.modules[name] |= self.top_level(tree)
            self.modules[path.parent.name].add(path.stem)  # a package's submodules
            if path.relative_to(REPO).parts[0] in PACKAGES:
                self.product |= {n for n in self.top_level(tree, imports=False) if not n.startswith("_")}
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    self.classes[node.name] |= self.top_level(node)
        self.attributes = set().union(*self.classes.values())

    @staticmethod
    def top_level(node, imports: bool = True) -> set[str]:
        out = set()
        for n in node.body:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.add(n.name)
            elif isinstance(n, (ast.Assign, ast.AnnAssign)):
                for target in (n.targets if isinstance(n, ast.Assign) else [n.target]):
                    out |= {x.id for x in ast.walk(target) if isinstance(x, ast.Name)}
            elif imports and isinstance(n, (ast.Import, ast.ImportFrom)):
                out |= {(a.asname or a.name).split(".")[0] for a in n.names}
        return out

    def missing(self, text: str, aliases: dict[str, str]) -> list[str]:
        """The references in ``text`` to files, modules' names and classes' attributes that do not exist."""
        out = [f"file {ref}" for ref in FILE_NAME.findall(text)
               if not any(p == ref or p.endswith("/" + ref) for p in self.paths)]
        for first, second in DOTTED.findall(text):
            module = aliases.get(first, first)
            if second in NOT_ATTRIBUTES or second.startswith("__") or first in ("self", "cls"):
                continue
            if first[0].isupper() and first in self.classes:
                if second not in self.classes[first]:
                    out.append(f"{first}.{second} (no such attribute)")
            elif module in self.modules:
                if second not in self.modules[module] and second not in self.attributes:
                    out.append(f"{first}.{second} (not in {module})")
            elif second in self.product and first not in aliases:
                out.append(f"{first}.{second} ({first} is no module)")
        return out


def docs_and_comments(path: Path, tree: ast.Module):
    """(line, text) of each docstring and comment of a file."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield node.body[0].lineno, doc
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string


def test_docstrings_and_comments_name_what_exists():
    files = python_files(product_only=False)
    names = Names(files)
    wrong = []
    for path in files:
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                aliases.update({a.asname or a.name.split(".")[0]: (a.name if isinstance(node, ast.ImportFrom)
                                                                  else a.name.split(".")[-1]) for a in node.names})
        wrong += [f"{path.relative_to(REPO)}:{line}: {ref}" for line, text in docs_and_comments(path, tree)
                  for ref in names.missing(text, aliases)]
    assert wrong == []


def test_the_name_check_finds_stale_names():
    names = Names(python_files(product_only=False))
    assert names.missing("see cache_index.py and images.read_pixels; slices.DENSE_VERSION; "
                         "LoadedModel.assign_sites", {}) == [
        "file cache_index.py", "images.read_pixels (images is no module)",
        "slices.DENSE_VERSION (not in slices)", "LoadedModel.assign_sites (no such attribute)"]
    assert names.missing("feature_extractor/imaging/decode.py: decode.read_pixels, LoadedModel.features", {}) == []
