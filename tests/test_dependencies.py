"""Every third-party package the product code imports when a module loads is declared in
setup.cfg, so a fresh install has it (imports inside functions are optional extras)."""

import ast
import configparser
import importlib.metadata
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("generator", "trainer", "evaluation")


def declared_distributions() -> set[str]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = config["options"]["install_requires"].split("\n")
    return {re.split(r"[<>=!~ \[;]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
            for line in lines if line.strip()}


def module_level_imports(node: ast.AST) -> set[str]:
    """Top-level names imported by `node`'s statements, not looking inside functions."""
    modules = set()
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(child, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in child.names)
        elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
            modules.add(child.module.split(".")[0])
        modules |= module_level_imports(child)
    return modules


def imported_top_level_modules() -> set[str]:
    modules = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            modules |= module_level_imports(ast.parse(path.read_text()))
    return modules - set(sys.stdlib_module_names) - set(PACKAGES) - {"examples"}


def test_every_imported_package_is_declared():
    providers = importlib.metadata.packages_distributions()
    declared = declared_distributions()
    undeclared = {}
    for module in sorted(imported_top_level_modules()):
        names = {name.lower().replace("_", "-") for name in providers.get(module, [module])}
        if not names & declared:
            undeclared[module] = sorted(names)
    assert not undeclared, f"imported but not in setup.cfg install_requires: {undeclared}"
