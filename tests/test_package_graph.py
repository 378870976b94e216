"""The package graph points one way: core `vla_dino` never imports a plugin, the plugins never import each other's
internals against the declared direction, and no two packages import each other (function-level imports included:
they are read from the source, not from what happens to be loaded)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# distribution → (package folder, distributions it may import)
DISTRIBUTIONS = {
    "vla_dino": (ROOT / "vla_dino", set()),
    "lerobot_policy_vla_dino": (ROOT / "policies" / "lerobot_policy_vla_dino", {"vla_dino"}),
    "lerobot_env_vla_dino": (ROOT / "envs" / "lerobot_env_vla_dino", {"vla_dino", "lerobot_policy_vla_dino"}),
}


def module_name(path: Path, package_dir: Path, package: str) -> str:
    parts = [package, *path.relative_to(package_dir).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, module: str) -> set[str]:
    """Every module named by an import statement anywhere in the file (relative imports resolved)."""
    names: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return names


def source_graph() -> dict[str, set[str]]:
    """module → the modules of our three distributions it imports."""
    modules: dict[str, Path] = {}
    for package, (folder, _) in DISTRIBUTIONS.items():
        for path in folder.rglob("*.py"):
            modules[module_name(path, folder, package)] = path
    graph = {}
    for module, path in modules.items():
        graph[module] = {name for name in imported_modules(path, module) if name in modules and name != module}
    return graph


def package_of(module: str) -> str:
    """The unit the one-way rule is about: a subpackage of vla_dino (vla_dino.pretrain) or a top-level module
    (vla_dino.visualize); a plugin counts as one unit."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "vla_dino" and len(parts) > 1 else parts[0]


def test_no_distribution_imports_against_the_declared_direction():
    wrong = []
    for module, imports in source_graph().items():
        own = module.split(".")[0]
        allowed = DISTRIBUTIONS[own][1] | {own}
        wrong += [f"{module} imports {name}" for name in sorted(imports) if name.split(".")[0] not in allowed]
    assert not wrong, "imports against the package direction:\n" + "\n".join(wrong)


def test_packages_form_no_cycle():
    edges: dict[str, set[str]] = {}
    for module, imports in source_graph().items():
        edges.setdefault(package_of(module), set()).update(package_of(name) for name in imports)
    for unit in edges:
        edges[unit].discard(unit)

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in edges.get(node, ()):
                if nxt == start:
                    return path + [start]
                if nxt not in path:
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = {" → ".join(c) for unit in edges if (c := cycle_from(unit))}
    assert not cycles, "package import cycles:\n" + "\n".join(sorted(cycles))


@pytest.mark.parametrize("package", sorted(DISTRIBUTIONS))
def test_plugin_dependencies_are_declared(package):
    """A distribution that imports another names it in its pyproject dependencies."""
    folder, allowed = DISTRIBUTIONS[package]
    pyproject = (folder.parent / "pyproject.toml").read_text()
    used = {name.split(".")[0] for module, imports in source_graph().items() if module.split(".")[0] == package
            for name in imports} - {package}
    missing = [dep for dep in sorted(used) if f'"{dep}' not in pyproject]
    assert not missing, f"{folder.parent / 'pyproject.toml'} does not declare {missing}"
