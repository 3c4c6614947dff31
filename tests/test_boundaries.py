"""Architecture rules: Qt only in desktop/, no torch in the runtime, code stays clean."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_import_linter_contracts_hold() -> None:
    run = subprocess.run([str(BIN / "lint-imports")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Contracts: 4 kept, 0 broken" in run.stdout


LAYER_BREACHES = {
    "a lower layer naming a higher one for a type hint": (
        "engine/imaging/breach.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from engine.services import Services\n"),
    "the store calling up into a use-case": ("engine/store/breach.py", "import engine.services.images\n"),
    "two independent layers importing each other": ("engine/inference/breach.py", "import engine.imaging.masks\n"),
    "a layer the contract does not name": ("engine/newlayer.py", "import engine.errors\n"),
}


@pytest.mark.parametrize("breach", LAYER_BREACHES, ids=list(LAYER_BREACHES))
def test_the_layers_contract_fails_on_a_breach(breach: str, tmp_path: Path) -> None:
    """The engine's layers contract, run on a copy of the engine with one bad import added, is broken."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c for c in config["contracts"] if c["type"] == "layers"]
    shutil.copytree(REPO / "engine", tmp_path / "engine", ignore=shutil.ignore_patterns("__pycache__"))
    lines = ["[importlinter]", "root_packages =", "    engine", "", "[importlinter:contract:layers]",
             f"name = {layers['name']}", "type = layers", "containers =", "    engine", "layers =",
             *(f"    {layer}" for layer in layers["layers"]), "exhaustive = true", "exhaustive_ignores =",
             *(f"    {name}" for name in layers["exhaustive_ignores"])]
    (tmp_path / ".importlinter").write_text("\n".join(lines) + "\n")
    env = os.environ | {"PYTHONPATH": str(tmp_path)}

    def lint() -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, env=env)

    clean = lint()
    assert clean.returncode == 0 and "1 kept, 0 broken" in clean.stdout, clean.stdout + clean.stderr
    path, source = LAYER_BREACHES[breach]
    (tmp_path / path).write_text(source)
    broken = lint()
    assert broken.returncode != 0 and "1 broken" in broken.stdout, broken.stdout + broken.stderr


RUNTIME_WITHOUT_TORCH = textwrap.dedent(
    """
    import sys
    for name in ("torch", "torchvision", "torchxrayvision", "PySide6"):
        sys.modules[name] = None  # any import of these now raises ImportError
    import pkgutil, importlib, engine, dicom_node
    for package in (engine, dicom_node):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(info.name)
    from engine.api import Engine
    with Engine(home=sys.argv[1], model_pack=sys.argv[2]) as e:
        s = e.create_study_session()["session_id"]
        r = e.add_image_to_session(s, sys.argv[3])
        assert r["auto_analysis"]["classification"]["status"] == "ok"
    print("runtime ok")
    """
)


def test_the_runtime_runs_a_whole_analysis_without_torch_or_qt(home: Path, model_pack: Path, rg1_path: Path) -> None:
    run = subprocess.run([sys.executable, "-c", RUNTIME_WITHOUT_TORCH, str(home), str(model_pack), str(rg1_path)],
                         capture_output=True, text=True, timeout=300, env=os.environ | {"MEDVISION_KEYRING": "0"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "runtime ok"


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(BIN))
    run = subprocess.run([ruff, "check", "."], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout


def test_no_large_files_are_tracked() -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    big = [f for f in files.split("\0") if f and (REPO / f).is_file() and (REPO / f).stat().st_size > 2_000_000]
    assert big == [], f"large files in git (models and data stay out): {big}"


OUR_PACKAGES = ("engine", "models", "dicom_node", "desktop")


def _private_names_taken(path: Path) -> list[str]:
    """``from ours import _name`` and ``ours_module._name`` in one file (dunders are public)."""
    import ast

    def private(name: str) -> bool:
        return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))

    tree = ast.parse(path.read_text(), filename=str(path))
    modules: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in OUR_PACKAGES:
            found += [f"{path}:{node.lineno} from {node.module} import {a.name}" for a in node.names if private(a.name)]
        elif isinstance(node, ast.Import):
            modules |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] in OUR_PACKAGES}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            chain, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in modules:
                found.append(f"{path}:{node.lineno} {inner.id}.{'.'.join(reversed(chain))}")
    return found


def test_no_module_takes_another_modules_private_names() -> None:
    files = [p for package in OUR_PACKAGES for p in (REPO / package).rglob("*.py")]
    taken = [hit for path in files for hit in _private_names_taken(path)]
    assert taken == []


def test_the_private_name_check_sees_a_breach(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from engine.imaging.decode import _uid\nimport engine.api\nengine.api.Engine._lock\n")
    assert len(_private_names_taken(bad)) == 2
