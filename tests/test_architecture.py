"""The package's shape: no import cycles, no cross-package private imports, small modules, no type dispatch."""

import ast
import pathlib
import re

import pytest


PKG = pathlib.Path(__file__).resolve().parents[1] / "vdmpp"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    if node.level:
        base = base[: len(base) - node.level + 1]
        return ".".join(base + ([node.module] if node.module else []))
    return node.module or ""


def _imports(module: str) -> set[str]:
    """The vdmpp modules `module` imports at its top level (not inside functions)."""
    path = MODULES[module]
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("vdmpp")}
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_pkg, node)
            if not target.startswith("vdmpp"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in MODULES else target)
    return out & set(MODULES)


def test_no_import_cycles():
    graph = {m: _imports(m) for m in MODULES}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n) :] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert len(graph) > 40  # the walk saw the whole package


def test_no_private_imports_across_packages():
    bad = []
    for module in MODULES:
        package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
        for target in _imports(module):
            private = [p for p in target.split(".")[1:] if p.startswith("_") and p not in ("_misc", "_types", "_io")]
            if private and not target.startswith(package + "."):
                bad.append(f"{module} imports {target}")
    assert not bad, bad


def test_no_module_over_400_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


_STRATEGY = re.compile(
    r"isinstance\([^)]*\b(Abstract\w*(Schedule|Weighting|Loss|Parameterisation)|\w*(Schedule|Weighting|Loss|Prediction)"
    r"|ELBO|Simple|Shifted|Guided)\b"
)


def test_no_isinstance_on_strategy_classes():
    hits = [
        f"{m}:{i + 1}: {line.strip()}"
        for m, p in MODULES.items()
        if m != "vdmpp._misc"
        for i, line in enumerate(p.read_text().splitlines())
        if _STRATEGY.search(line)
    ]
    assert not hits, hits
