"""The house stays as drawn: the import-linter contracts of pyproject.toml (layers of
node/, protocol pure, node without devtools, only node.net imports libp2p, only
node.storage imports lmdb, no import cycles in a package) and no private name used
across modules. `lint-imports` runs the same contracts from the command line."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("node", "devtools")
PROJECT = ("protocol", "node", "devtools")
#: Known exceptions, each with its reason.
ALLOWED = {
    # the vectors publish a hash of each integer table of the aggregation (PROTOCOL.md);
    # protocol/ is owned by the spec and keeps these names private for now
    "devtools/vectors.py: aggregate._LOG2_TABLE", "devtools/vectors.py: aggregate._EXP2_HI",
    "devtools/vectors.py: aggregate._EXP2_LO",
    # argparse has no public way to list a parser's actions (the completion script does)
    "node/cli/ops.py: p._actions", "node/cli/ops.py: argparse._SubParsersAction",
    "node/cli/aggregate.py: argparse._SubParsersAction", "devtools/cli.py: argparse._SubParsersAction",
}


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout, r.stdout[-3000:]


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _ours(module: str | None, level: int) -> bool:
    return level > 0 or (module or "").split(".")[0] in PROJECT


def private_names_used_across_modules(path: Path) -> list[str]:
    """``from m import _x``, ``import m._x`` and ``alias._x`` where ``alias`` names an
    imported module of the project: each a private name of another module."""
    tree = ast.parse(path.read_text(), str(path))
    modules: set[str] = set()  # local names bound to imported modules of the project
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and _ours(node.module, node.level):
            for a in node.names:
                if _is_private(a.name):
                    found.append(f"{path}:{node.lineno}: from {node.module or '.'} import {a.name}")
                elif a.name[:1].islower():
                    modules.add(a.asname or a.name)  # maybe a module (``from protocol import sync as sp``)
            if any(_is_private(part) for part in (node.module or "").split(".")):
                found.append(f"{path}:{node.lineno}: from {node.module}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if not _ours(a.name, 0):
                    continue
                if any(_is_private(part) for part in a.name.split(".")):
                    found.append(f"{path}:{node.lineno}: import {a.name}")
                modules.add(a.asname or a.name.split(".")[0])
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _is_private(node.attr) and isinstance(node.value, ast.Name)
                and node.value.id in modules):
            found.append(f"{path}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def private_attributes_of_others(path: Path) -> list[str]:
    """``obj._x`` where ``obj`` is not ``self``/``cls`` and nothing in this module defines
    ``_x``: a private attribute of an object of another module (``node._orphans``)."""
    tree = ast.parse(path.read_text(), str(path))
    defined = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            defined.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            defined.add(node.value)  # __slots__ entries
    return [f"{path}:{node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and _is_private(node.attr) and node.attr not in defined
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))]


def test_no_private_name_is_used_across_modules():
    found = [f for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))
             for f in private_names_used_across_modules(p) + private_attributes_of_others(p)]
    found = sorted(set(found))
    found = [f for f in found if "{}: {}".format(f.split(":", 1)[0].replace(str(ROOT) + "/", ""),
                                                 f.split(": ", 1)[1]) not in ALLOWED]
    assert found == [], "private names of other modules (make them public, or keep them inside):\n" + "\n".join(found)


def test_the_check_sees_private_imports(tmp_path):
    """The AST check itself: it flags each form and lets public and dunder names through."""
    p = tmp_path / "m.py"
    p.write_text("import os\nfrom node import _x, y, __version__\nfrom node._b import c\nimport devtools._d\n"
                 "from protocol import mod\nfrom argparse import _SubParsersAction\nfrom . import _rel\n"
                 "v = os._exit\nw = mod._z\nz = self._own\n")
    got = [f.split(": ", 1)[1] for f in private_names_used_across_modules(p)]
    assert got == ["from node import _x", "from node._b", "import devtools._d", "from . import _rel", "mod._z"]
    p.write_text("class A:\n    __slots__ = ('_s',)\n    def f(self, node, other):\n"
                 "        self._mine = 1\n        return node._orphans, other._mine, other._s, self._x\n")
    assert [f.split(": ", 1)[1] for f in private_attributes_of_others(p)] == ["node._orphans"]


def test_readme_map_names_every_package_and_module():
    """README's "How it is built" draws the tree as it is: every subpackage of node/ and
    devtools/ (as ``name/``) and every module of devtools/ and node/'s subpackages."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## How it is built", 1)[1].split("```", 2)[1]
    missing = []
    for pkg in PACKAGES:
        for init in sorted((ROOT / pkg).rglob("__init__.py")):
            d = init.parent
            if d != ROOT / pkg and f"{d.name}/" not in block:
                missing.append(str(d.relative_to(ROOT)) + "/")
            for mod in sorted(d.glob("*.py")):
                if mod.stem not in ("__init__", "__main__") and mod.stem not in block:
                    missing.append(str(mod.relative_to(ROOT)))
    assert missing == [], f"README's map lacks {missing}"
