"""Draw the package: imports between its parts, lines per module, the longest functions; check the layer rules.

    .venv/bin/python tools/package_map.py [ROOT] [--modules] [--check]

Why a script and not a picture: the shape of the package is a rule the next engineer must keep (issue #12), so it
is computed from the source (``ast``, no imports executed) and the same rules run as a test
(tests/test_architecture.py). The layers, lowest first: the library (``data``, ``models``, ``train``,
``serving``, ``distribute`` and the top-level modules) never imports the Spark layer (``spark``) or the drivers
(``jobs``); ``spark`` never imports ``jobs``. A module over :data:`MAX_MODULE_LINES` must say why at its top
(a line starting ``Why this size:`` in its docstring); no function may exceed :data:`MAX_FUNCTION_LINES`; the
contracts' file names (:data:`CONTRACT_NAMES`) are spelled only in ``imagenet_spark/layout.py``.
"""

from __future__ import annotations

import argparse
import ast
import logging
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("package_map")

PACKAGE = "imagenet_spark"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
SIZE_REASON = "Why this size:"
# Which parts may not import which: (importer's part, forbidden part). "" is the top-level modules.
LIBRARY = ("", "data", "models", "train", "serving", "distribute", "report")
FORBIDDEN = tuple((low, high) for low in LIBRARY for high in ("spark", "jobs")) + (("spark", "jobs"),)
# File names of the on-disk contracts: spelled only in their owner, imagenet_spark/layout.py (a string constant
# equal to one of them anywhere else is a second spelling). Generic words ("train", "best") are left out.
CONTRACT_NAMES = frozenset({
    "saved_model", "labels.txt", "metrics.json", "config.json", "checkpoints", "tensorboard", "model_info.json",
    "trials.json", "trials.csv", "manifest.json", "run.json", "_staging", "_tasks", "_publishing.json",
    "_plan.json", "_inputs.json.zlib", "_common_metadata", ".imagenet-spark.json",
    ".imagenet-spark.lease", ".imagenet-spark-preflight", "mlflow_run.json",
})
CONTRACT_OWNER = "layout"
# Top-level modules that are front doors over the drivers (allowed to import jobs/ and spark/).
FRONT_DOORS = {"cli", "notebook"}


@dataclass
class Module:
    name: str  # dotted, without the package prefix ("data.partition")
    path: Path
    lines: int
    imports: set[str] = field(default_factory=set)  # dotted names inside the package
    functions: list[tuple[str, int]] = field(default_factory=list)  # (qualified name, lines)
    size_reason: bool = False
    contract_strings: list[tuple[str, int]] = field(default_factory=list)  # (name, line) spelled here

    @property
    def part(self) -> str:
        head, _, rest = self.name.partition(".")
        return head if rest else ""


def _functions(tree: ast.AST) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (child.end_lineno or child.lineno) - child.lineno + 1
                out.append((prefix + child.name, length))
                visit(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")

    visit(tree, "")
    return out


def _imports(tree: ast.AST, module: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[: -node.level]
                names = [".".join([PACKAGE, *base, *(node.module.split(".") if node.module else [])])]
            else:
                names = [node.module or ""]
            names += [f"{names[0]}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                found.add(name[len(PACKAGE) + 1:])
    return found


def scan(root: Path) -> dict[str, Module]:
    """Every module of the package under ``root`` (the repository)."""
    modules: dict[str, Module] = {}
    base = root / PACKAGE
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        name = ".".join(parts)
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        doc = ast.get_docstring(tree) or ""
        spelled = [(n.value, n.lineno) for n in ast.walk(tree)
                   if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in CONTRACT_NAMES]
        modules[name] = Module(name=name, path=path, lines=len(text.splitlines()), functions=_functions(tree),
                               size_reason=SIZE_REASON in doc, contract_strings=spelled)
    for name, mod in modules.items():
        tree = ast.parse(mod.path.read_text(encoding="utf-8"))
        mod.imports = {i for i in _imports(tree, name) if i}
        # keep only names that are modules (from x import y may name a function)
        mod.imports = {_owning_module(i, modules) for i in mod.imports} - {name, ""}
    return modules


def _owning_module(dotted: str, modules: dict[str, Module]) -> str:
    while dotted and dotted not in modules:
        dotted = dotted.rpartition(".")[0]
    return dotted


def violations(modules: dict[str, Module]) -> list[str]:
    """Every broken rule, one line each (empty when the package keeps its shape)."""
    out: list[str] = []
    for mod in modules.values():
        front_door = mod.name.split(".")[0] in FRONT_DOORS
        for imported in sorted(mod.imports):
            target = modules[imported].part if imported in modules else ""
            if (mod.part, target) in FORBIDDEN and not front_door:
                out.append(f"{mod.name} imports {imported}: the {mod.part or 'top-level'} layer may not import "
                           f"{target}/")
        if mod.lines > MAX_MODULE_LINES and not mod.size_reason:
            out.append(f"{mod.name}: {mod.lines} lines, over {MAX_MODULE_LINES} without a '{SIZE_REASON}' line "
                       "in its docstring")
        if mod.name != CONTRACT_OWNER:
            out += [f"{mod.name}:{line}: spells {value!r}; ask imagenet_spark.layout for it"
                    for value, line in mod.contract_strings]
        for fn, length in mod.functions:
            if length > MAX_FUNCTION_LINES:
                out.append(f"{mod.name}.{fn}: {length} lines, over {MAX_FUNCTION_LINES}")
    return out


def part_graph(modules: dict[str, Module]) -> dict[tuple[str, str], int]:
    """(importer part, imported part) -> number of module-level import edges between them."""
    edges: dict[tuple[str, str], int] = defaultdict(int)
    for mod in modules.values():
        for imported in mod.imports:
            if imported in modules and modules[imported].part != mod.part:
                edges[(mod.part or "(top)", modules[imported].part or "(top)")] += 1
    return dict(edges)


def render(modules: dict[str, Module], *, per_module: bool) -> str:
    lines = [f"{len(modules)} modules, {sum(m.lines for m in modules.values())} lines", "",
             "part         modules  lines  longest function"]
    parts: dict[str, list[Module]] = defaultdict(list)
    for mod in modules.values():
        parts[mod.part or "(top)"].append(mod)
    for part, mods in sorted(parts.items()):
        fn = max(((f"{m.name}.{f}", n) for m in mods for f, n in m.functions), key=lambda x: x[1], default=("", 0))
        lines.append(f"{part:<12} {len(mods):>7} {sum(m.lines for m in mods):>6}  {fn[0]} ({fn[1]})")
    lines += ["", "imports between parts (importer -> imported: edges):"]
    for (a, b), n in sorted(part_graph(modules).items()):
        lines.append(f"  {a} -> {b}: {n}")
    if per_module:
        lines += ["", "module                                   lines  longest function"]
        for mod in sorted(modules.values(), key=lambda m: -m.lines):
            fn = max(mod.functions, key=lambda x: x[1], default=("", 0))
            lines.append(f"{mod.name:<40} {mod.lines:>5}  {fn[0]} ({fn[1]})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--modules", action="store_true", help="one line per module too")
    parser.add_argument("--check", action="store_true", help="list the broken rules; exit 1 if any")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    modules = scan(Path(args.root))
    log.info("%s", render(modules, per_module=args.modules))
    broken = violations(modules)
    if args.check or broken:
        log.info("\n%d broken rule(s)%s", len(broken), ":" if broken else "")
        for line in broken:
            log.info("  %s", line)
    return 1 if args.check and broken else 0


if __name__ == "__main__":
    sys.exit(main())
