"""docs/ARCHITECTURE.md stays true: its package map names every module, and the modules
import each other without a cycle (any import, a function-level one included: a cycle
hidden inside a function is still a cycle)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cprec_core", "cprec_assets")


def package_map() -> dict[str, str]:
    """The text the map gives each folder ("cprec_core", "cprec_core/data", ...)."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    block = text.split("## The packages", 1)[1].split("```", 2)[1]
    sections: dict[str, str] = {}
    package = current = None
    for line in block.splitlines():
        if re.match(rf"^({'|'.join(PACKAGES)})/", line):
            package = current = line.split("/")[0]
            continue
        if package is None or not line.strip():
            continue
        if not line.startswith(" "):
            package = None
            continue
        folder = re.match(r"^  (\w+)/", line)
        if folder:
            current, line = f"{package}/{folder.group(1)}", line[folder.end():]
        elif len(line) - len(line.lstrip()) == 2:
            current = package
        sections[current] = sections.get(current, "") + " " + line
    return sections


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            found[".".join(parts)] = path
    return found


def test_the_package_map_names_every_module():
    sections = package_map()
    missing = []
    for path in modules().values():
        rel = path.relative_to(ROOT)
        if path.name in ("__init__.py", "__main__.py"):
            continue
        if len(rel.parts) > 3:  # a nested package: named as a folder in its parent's line
            if f"{rel.parts[2]}/" not in sections.get("/".join(rel.parts[:2]), ""):
                missing.append(str(rel))
        elif not re.search(rf"(?<![\w/]){re.escape(path.name)}",
                           sections.get("/".join(rel.parts[:-1]), "")):
            missing.append(str(rel))
    assert missing == [], f"docs/ARCHITECTURE.md's package map lacks {missing}"


def import_graph() -> dict[str, set[str]]:
    found = modules()
    graph: dict[str, set[str]] = {name: set() for name in found}
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in found:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def test_modules_import_each_other_without_a_cycle():
    graph = import_graph()
    assert "cprec_core.config" in graph["cprec_core.data.raw"]  # the walk sees imports
    assert "cprec_assets.launcher" in graph["cprec_assets.resources"]
    cycles, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycles.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, path + [node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    assert cycles == [], f"import cycles: {cycles[:3]}"


def test_the_core_never_imports_dagster():
    offenders = [name for name, path in modules().items() if name.startswith("cprec_core")
                 and re.search(r"^\s*(import|from)\s+dagster", path.read_text(), re.M)]
    assert offenders == []


def test_every_module_run_with_python_m_has_its_main_guard():
    """A module whose docstring says ``python -m <module>`` runs its ``main`` when executed
    (without the guard the command does nothing and exits 0: `make demo` once did)."""
    missing = []
    for name, path in modules().items():
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if not re.search(rf"python -m {re.escape(name)}(?![\w.])", doc):
            continue
        package_main = path.name == "__init__.py" and (path.parent / "__main__.py").is_file()
        if not package_main and 'if __name__ == "__main__":' not in path.read_text():
            missing.append(name)
    assert missing == [], f"run as python -m but never call main: {missing}"
