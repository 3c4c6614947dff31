"""The offline bundle: built once (cached), installed from its archive with no network,
then used: RG1 analysed and the MCP server's tools listed from the installed venv."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from engine.inference.modelpack import sha256_file
from tests.fs import linked_copy
from tests.packaging.conftest import offline_env, record_timing

HERE = Path(__file__).resolve().parent
FORBIDDEN = ("torch", "torchvision", "torchxrayvision", "transformers", "timm")


def _project(wheel: str) -> str:
    return wheel.split("-")[0].lower().replace("_", "-")


def test_bundle_holds_runtime_wheels_pack_scripts_and_checksums(bundle: dict, installed: dict) -> None:
    root: Path = installed["bundle_dir"]  # as unpacked from the archive
    info = json.loads((root / "bundle.json").read_text())
    assert info["onnxruntime"] == "cpu" and info["requirement"] == "medvision"
    wheels = sorted(p.name for p in (root / "wheels").iterdir())
    assert wheels and all(w.endswith(".whl") for w in wheels)  # nothing left to build on site
    projects = {_project(w) for w in wheels}
    assert {"medvision", "onnxruntime", "llama-cpp-python", "mcp", "pynetdicom", "sqlcipher3"} <= projects
    assert not projects & set(FORBIDDEN)
    llama = next(w for w in wheels if _project(w) == "llama-cpp-python")
    assert "linux_x86_64" in llama or "manylinux" in llama  # prebuilt, platform wheel
    assert (root / "install.sh").stat().st_mode & 0o111 and (root / "install.ps1").is_file()
    assert (root / "README.md").read_text().startswith("# ")
    assert (root / "tools" / "WinSW-x64.exe").read_bytes()[:2] == b"MZ"
    pack_tar = root / info["model_pack"]["file"]
    assert sha256_file(pack_tar) == info["model_pack"]["sha256"] and info["model_pack"]["trained"] is False
    # SHA256SUMS lists every file exactly once, and every digest holds.
    sums = dict(reversed(line.split("  ", 1)) for line in (root / "SHA256SUMS").read_text().splitlines())
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {"SHA256SUMS", "build.json"}
    assert set(sums) == files
    for name in ("bundle.json", "install.sh", info["model_pack"]["file"]):
        assert sha256_file(root / name) == sums[name]
    assert bundle["archive"].is_file() and bundle["archive"].with_name(bundle["archive"].name + ".sha256").is_file()


def test_install_refuses_a_modified_bundle(installed: dict, tmp_path: Path) -> None:
    copy = linked_copy(installed["bundle_dir"], tmp_path / "bundle")
    (copy / "install.ps1").unlink()
    (copy / "install.ps1").write_text("Write-Host 'tampered'\n")
    proc = subprocess.run([str(copy / "install.sh"), "--prefix", str(tmp_path / "prefix")],
                          env=offline_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "SHA256SUMS does not match" in proc.stderr
    assert not (tmp_path / "prefix").exists()


def test_offline_install_then_first_analysis_of_rg1(installed: dict, rg1_path: Path, tmp_path: Path) -> None:
    prefix: Path = installed["prefix"]
    assert os.readlink(prefix / "current") == f"versions/{installed['bundle_dir'].name}"
    assert (prefix / "models" / "default" / "manifest.json").is_file()
    out = tmp_path / "analysis.json"
    started = time.monotonic()
    proc = subprocess.run([str(prefix / "bin" / "medvision"), "analyze", str(rg1_path), "--json", str(out)],
                          env=offline_env(MEDVISION_HOME=str(tmp_path / "home")), capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    analysis_s = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())["results"][0]
    assert result["type"] == "CXR" and result["image"]["source_name"] == "RG1_UNCR.dcm"
    assert result["auto_analysis"]["model_trained"] is False
    assert "Development models" in result["auto_analysis"]["banner"]
    # the installed code, not the checkout's, did it
    where = subprocess.run([str(prefix / "current" / "bin" / "python"), "-c", "import engine; print(engine.__file__)"],
                           env=offline_env(), capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert where.startswith(str(prefix))
    record_timing("bundle_first_analysis_s", analysis_s)
    total = installed["unpack_s"] + installed["install_s"] + analysis_s
    record_timing("bundle_install_plus_first_analysis_s", total)  # its target: benchmarks/bench_packaging.py


def test_installed_mcp_server_lists_its_tools(installed: dict, tmp_path: Path) -> None:
    python = installed["prefix"] / "current" / "bin" / "python"
    env = offline_env(MEDVISION_HOME=str(tmp_path / "home"),
                      MEDVISION_MODEL_PACK=str(installed["prefix"] / "models" / "default"))
    proc = subprocess.run([str(python), str(HERE / "mcp_list_tools.py"), str(python), "-m", "engine.mcp"],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    listing = json.loads(proc.stdout)
    assert listing["server"] == "medvision"
    assert {"analyze_image", "create_study_session", "export_study"} <= set(listing["tools"])


def test_installed_model_pack_verifies(installed: dict, tmp_path: Path) -> None:
    proc = subprocess.run([str(installed["prefix"] / "bin" / "medvision"), "models", "verify"],
                          env=offline_env(MEDVISION_HOME=str(tmp_path / "home")), capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_upgrade_switches_current_and_keeps_the_previous_version(installed: dict, tmp_path: Path) -> None:
    """A newer bundle (same wheels, new name) installs beside the old one; --no-pack keeps the pack."""
    import hashlib

    prefix: Path = installed["prefix"]
    old = os.readlink(prefix / "current")
    pack_manifest = (prefix / "models" / "default" / "manifest.json").stat().st_ino
    newer = tmp_path / "newer"
    linked_copy(installed["bundle_dir"], newer)
    info = json.loads((newer / "bundle.json").read_text())
    info["name"] = info["name"].replace(f"-{info['version']}-", f"-{info['version']}.post1-")
    (newer / "bundle.json").unlink()
    (newer / "bundle.json").write_text(json.dumps(info))
    digest = hashlib.sha256((newer / "bundle.json").read_bytes()).hexdigest()
    sums = [f"{digest}  bundle.json" if line.endswith("  bundle.json") else line
            for line in (newer / "SHA256SUMS").read_text().splitlines()]
    (newer / "SHA256SUMS").unlink()
    (newer / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    proc = subprocess.run([str(newer / "install.sh"), "--prefix", str(prefix), "--no-pack"], env=offline_env(),
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.readlink(prefix / "current") == f"versions/{info['name']}"
    assert os.readlink(prefix / "previous") == old and (prefix / old).is_dir()
    assert (prefix / "models" / "default" / "manifest.json").stat().st_ino == pack_manifest
    ok = subprocess.run([str(prefix / "bin" / "medvision"), "models", "list"], env=offline_env(),
                        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert ok.returncode == 0 and "trained: false" in ok.stdout, ok.stderr[-2000:]
