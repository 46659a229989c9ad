"""The package's import graph, read from the source (nothing is imported): layering checks and honest DVC deps.

* :func:`graph`: module -> the package modules it imports, each edge marked top-level or inside a function.
* :func:`cycles`: the import cycles (the package has none; ``tests/test_architecture.py`` keeps it so).
* :func:`notebook_closure`: the package files a notebook really executes (what it imports, transitively, plus the
  ``__init__`` of every package on the way), which is what its DVC stage must depend on.

    python -m entropy_rl.depgraph deps notebooks/20_rl.ipynb   # the files, one per line
    python -m entropy_rl.depgraph check dvc.yaml               # every stage's deps cover its notebook's closure
"""
from __future__ import annotations

import ast
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

PACKAGE = "entropy_rl"
SRC = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    in_function: bool


def module_name(path: Path, src: Path = SRC) -> str:
    rel = path.relative_to(src).with_suffix("")
    parts = [PACKAGE, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_path(name: str, src: Path = SRC) -> Path | None:
    rel = Path(*name.split(".")[1:]) if name != PACKAGE else Path()
    for p in (src / rel.with_suffix(".py") if rel.parts else None, src / rel / "__init__.py"):
        if p is not None and p.exists():
            return p
    return None


def _is_package(name: str, src: Path) -> bool:
    p = module_path(name, src)
    return p is not None and p.name == "__init__.py"


def _resolve(node: ast.ImportFrom, here: str, is_pkg: bool, src: Path) -> list[str]:
    """The package modules an ``ImportFrom`` names: the module itself, or its submodules for ``from . import x``."""
    if node.level:
        base = here.split(".") if is_pkg else here.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    if mod != PACKAGE and not mod.startswith(PACKAGE + "."):
        return []
    out = []
    for alias in node.names:
        sub = f"{mod}.{alias.name}"
        out.append(sub if module_path(sub, src) is not None else mod)
    return sorted(set(out))


def module_edges(path: Path, src: Path = SRC) -> list[Edge]:
    """Every import of a package module in ``path``, marked when it sits inside a function."""
    here = module_name(path, src)
    tree = ast.parse(path.read_text(), str(path))
    edges: list[Edge] = []

    def visit(node, in_fn: bool):
        for child in ast.iter_child_nodes(node):
            fn = in_fn or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for a in child.names:
                    if a.name == PACKAGE or a.name.startswith(PACKAGE + "."):
                        edges.append(Edge(here, a.name, child.lineno, in_fn))
            elif isinstance(child, ast.ImportFrom):
                for t in _resolve(child, here, path.name == "__init__.py", src):
                    edges.append(Edge(here, t, child.lineno, in_fn))
            visit(child, fn)

    visit(tree, False)
    return [e for e in edges if e.target != here]


def package_files(src: Path = SRC) -> list[Path]:
    return sorted(p for p in src.rglob("*.py") if "__pycache__" not in p.parts)


def graph(src: Path = SRC) -> dict[str, list[Edge]]:
    return dict(_graph(Path(src).resolve()))


@functools.lru_cache(maxsize=None)
def _graph(src: Path) -> tuple:
    """The graph of ``src``, read once per process (a stage check asks for one closure per stage)."""
    return tuple((module_name(p, src), module_edges(p, src)) for p in package_files(src))


def cycles(g: dict[str, list[Edge]]) -> list[list[str]]:
    """The import cycles of ``g`` (strongly connected components with more than one module, or a self-loop)."""
    adj = {m: sorted({e.target for e in es if e.target in g}) for m, es in g.items()}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in adj[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(adj):
        if v not in index:
            strong(v)
    return out


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def closure(modules: list[str], src: Path = SRC) -> set[str]:
    """The modules executed by importing ``modules``: their imports, transitively, and every parent package."""
    g = graph(src)
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        m = todo.pop()
        if m in seen or m not in g:
            continue
        seen.add(m)
        todo += [e.target for e in g[m]] + [p for p in _parents(m) if _is_package(p, src)]
    return seen


def notebook_modules(notebook: str | Path) -> list[str]:
    """The package modules a notebook's code cells import."""
    nb = json.loads(Path(notebook).read_text())
    out: set[str] = set()
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        try:
            tree = ast.parse("".join(cell.get("source", "")))
        except SyntaxError:  # IPython magics: the notebooks have none
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names if a.name.startswith(PACKAGE + ".")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    out.add(sub if module_path(sub) is not None else node.module)
    return sorted(out)


def notebook_closure(notebook: str | Path, src: Path = SRC, root: Path | None = None) -> list[str]:
    """The package files (paths relative to the repository root) a notebook executes."""
    root = root or src.parents[1]
    return sorted(str(module_path(m, src).relative_to(root)) for m in closure(notebook_modules(notebook), src))


def covered(files: list[str], deps: list[str]) -> list[str]:
    """The files that no dep (a file, or a directory above it) covers."""
    return [f for f in files if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)]


def check_dvc(dvc_file: str | Path) -> list[str]:
    """For every stage that runs a notebook: the package files its notebook executes that its deps miss, and the
    package files it lists that the notebook never executes."""
    dvc_file = Path(dvc_file)
    stages = (yaml.safe_load(dvc_file.read_text()) or {}).get("stages", {})
    problems = []
    for name, stage in stages.items():
        body = stage.get("do", stage)
        root = (dvc_file.resolve().parent / body.get("wdir", ".")).resolve()  # paths are relative to the stage's wdir
        deps = [d for d in body.get("deps", []) if isinstance(d, str)]
        nbs = [d for d in deps if d.endswith(".ipynb")]
        for nb in nbs:
            files = notebook_closure(root / nb, root=root)
            for f in covered(files, deps):
                problems.append(f"{dvc_file}: stage {name}: {nb} executes {f}, which its deps do not list")
            for d in deps:
                if d.startswith("src/") and not any(f == d or f.startswith(d.rstrip("/") + "/") for f in files):
                    problems.append(f"{dvc_file}: stage {name}: lists {d}, which {nb} never executes")
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["deps"] and len(argv) == 2:
        print("\n".join(notebook_closure(argv[1])))
        return 0
    if argv[:1] == ["check"] and len(argv) >= 2:
        problems = [p for f in argv[1:] for p in check_dvc(f)]
        print("\n".join(problems) or "every stage depends on what its notebook executes")
        return 1 if problems else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
