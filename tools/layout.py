"""Print galcae's floor plan: modules, import layers, cycles and the longest functions.

    python tools/layout.py [--functions N]

A module's layer is 0 if it imports no other galcae module, else one more than the
highest layer among the modules it imports (cycles are reported and broken).
"""

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "galcae"


def module_name(path):
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def galcae_imports(path, name, modules):
    """The galcae modules ``path`` imports. ``from galcae.pkg import module`` depends on the
    module; ``from galcae.pkg import name`` on the package (its ``__init__``)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("galcae"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("galcae"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    return found & set(modules)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", type=int, default=8, help="how many longest functions")
    args = parser.parse_args(argv)
    files = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
    graph = {m: sorted(galcae_imports(p, m, files) - {m}) for m, p in files.items()}

    layer, cycles, stack = {}, [], []

    def visit(m):
        if m in layer:
            return layer[m]
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return -1
        stack.append(m)
        depth = max((visit(d) for d in graph[m]), default=-1) + 1
        stack.pop()
        layer[m] = depth
        return depth

    for m in files:
        visit(m)
    print(f"{len(files)} modules, {max(layer.values()) + 1} layers, {len(cycles)} cycles")
    for depth in range(max(layer.values()) + 1):
        print(f"  layer {depth:2d}: " + " ".join(sorted(m.removeprefix('galcae.') or 'galcae'
                                                      for m in files if layer[m] == depth)))
    for cycle in cycles:
        print("  cycle: " + " -> ".join(cycle))

    functions = []
    for m, p in files.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{m}.{node.name}"))
    functions.sort(reverse=True)
    print(f"longest functions (of {len(functions)}):")
    for length, name in functions[:args.functions]:
        print(f"  {length:4d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
