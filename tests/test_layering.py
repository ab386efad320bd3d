"""The house rules of imports, checked from the source (AST, no import runs): the toy world is a wing that production
code never imports; data flows one way (data modules import no method, scorer, RPO or VCA code, and the shared file
formats import neither side); no function-level imports of project modules hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PRODUCTION = ("lit_pref", "callbacks", "datamodules")  # the installed folders (callbacks/ and datamodules/ beside lit_pref/)
ABOVE_DATA = ("lit_pref.rewards", "lit_pref.vca", "lit_pref.rpo", "lit_pref.modules", "lit_pref.toy")


def module_of(path: Path) -> str:
    """The installed module name of a repository file (``datamodules/x.py`` -> ``lit_pref.datamodules.x``)."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts if parts[0] == "lit_pref" else ["lit_pref", *parts])


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str, bool, list[str]]]:
    """``(line, imported module, inside a function, imported names)`` of every import of ``source`` (the text of
    ``module``), relative imports resolved."""
    tree = ast.parse(source)
    inside: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside |= {id(n) for n in ast.walk(fn) if n is not fn}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, id(node) in inside, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + is_package]
                target = ".".join(base + ([target] if target else []))
            found.append((node.lineno, target, id(node) in inside, [a.name for a in node.names]))
    return found


def production_files() -> list[Path]:
    return sorted(p for folder in PRODUCTION for p in (REPO / folder).rglob("*.py"))


def project(name: str) -> bool:
    return name.split(".")[0] in PRODUCTION


def violations() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"toy": [], "data": [], "formats": [], "private": [], "function": []}
    for path in production_files():
        module = module_of(path)
        where = str(path.relative_to(REPO))
        for line, target, in_function, names in imports(path.read_text(), module, path.name == "__init__.py"):
            if not project(target):
                continue
            at = f"{where}:{line} imports {target}"
            in_toy = module.startswith("lit_pref.toy")
            if target.startswith("lit_pref.toy") and not in_toy:
                found["toy"].append(at)
            if module.startswith("lit_pref.datamodules") and target.startswith(ABOVE_DATA):
                found["data"].append(at)
            if module.startswith("lit_pref.formats") and not target.startswith(("lit_pref.formats", "lit_pref.io")):
                found["formats"].append(at)
            if target.startswith("lit_pref.datamodules") and not module.startswith("lit_pref.datamodules") \
                    and any(n.startswith("_") for n in names):
                found["private"].append(f"{at} ({', '.join(n for n in names if n.startswith('_'))})")
            if in_function:
                found["function"].append(at)
    return found


@pytest.fixture(scope="module")
def found() -> dict[str, list[str]]:
    return violations()


def test_production_code_never_imports_the_toy_wing(found):
    assert found["toy"] == []


def test_data_modules_import_no_method_scorer_rpo_or_vca_code(found):
    assert found["data"] == []


def test_the_shared_formats_are_a_leaf(found):
    assert found["formats"] == []


def test_nothing_outside_the_data_modules_imports_their_private_names(found):
    assert found["private"] == []


def test_no_function_level_imports_of_project_modules(found):
    assert found["function"] == []


def test_the_checker_sees_relative_function_level_and_toy_imports():
    source = "from .dialogue_pairs import X\ndef f():\n    from lit_pref.toy import ToyJudge\n"
    assert imports(source, "lit_pref.datamodules.prompts") == [
        (1, "lit_pref.datamodules.dialogue_pairs", False, ["X"]), (3, "lit_pref.toy", True, ["ToyJudge"])]
    assert imports("from . import world\n", "lit_pref.toy", is_package=True) == [(1, "lit_pref.toy", False, ["world"])]
    assert module_of(REPO / "datamodules" / "prompts.py") == "lit_pref.datamodules.prompts"
    assert module_of(REPO / "lit_pref" / "toy" / "__init__.py") == "lit_pref.toy"
