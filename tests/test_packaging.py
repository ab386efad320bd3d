"""The install: callbacks/ and datamodules/ ship as lit_pref.callbacks and lit_pref.datamodules, never as top-level
modules of their own, and no source file imports them by the old top-level names."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile

from conftest import REPO

SOURCE_ROOTS = ("lit_pref", "callbacks", "datamodules", "tests", "bench")


def test_wheel_has_only_lit_pref_at_the_top(tmp_path):
    source = tmp_path / "source"  # built from a copy: setuptools leaves build/ and *.egg-info in the source folder
    for name in ("lit_pref", "callbacks", "datamodules"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("lit_pref-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"lit_pref"}
    # every package folder of the repository is in the wheel (setup.cfg lists them by hand)
    for root in ("lit_pref", "callbacks", "datamodules"):
        for init in (REPO / root).rglob("__init__.py"):
            package = init.parent.relative_to(REPO).as_posix()
            installed = package if root == "lit_pref" else f"lit_pref/{package}"
            assert f"{installed}/__init__.py" in names, f"{package} is missing from setup.cfg's packages"
    assert "lit_pref/datamodules/preference_pairs.py" in names and "lit_pref/callbacks/reward_metrics.py" in names
    assert any(name.startswith("lit_pref/assets/toy/pipeline/unet/") for name in names)
    # the toy world's shipped preference pairs (the demo's data)
    shipped_pairs = {f"lit_pref/assets/toy/pairs/best_of_8/{f}" for f in ("train.parquet", "val.parquet", "README.md")}
    assert shipped_pairs <= set(names)


def test_no_source_imports_the_old_top_level_names():
    offenders = []
    for root in SOURCE_ROOTS:
        for path in (REPO / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                         else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                offenders += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names
                              if n.split(".")[0] in ("callbacks", "datamodules")]
    assert not offenders, offenders


def test_configs_name_the_namespaced_classes():
    old = [f"{p.relative_to(REPO)}: {line.strip()}" for p in (REPO / "configs").rglob("*.yaml")
           for line in p.read_text(encoding="utf-8").splitlines()
           if line.strip().startswith(("class_path: callbacks.", "class_path: datamodules.",
                                        "- class_path: callbacks.", "- class_path: datamodules."))]
    assert not old, old
