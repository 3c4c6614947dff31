"""The desktop starts on a Linux desktop, or says in one coded line why not (issue 15, part 1).

Everything here uses PySide6's real platform plugins and the real dynamic loader: the
xcb plugin must load on this machine (test.sh installs its libraries as root), the
desktop must really start on it under Xvfb, and a plugin whose dependency cannot load
(a zero-byte ``libxcb-cursor.so.0`` first on ``LD_LIBRARY_PATH``: ``dlopen`` fails on it
as Qt's own loading would), a display that does not exist and no display at all must each
end with exit 2 and one ``DISPLAY_UNAVAILABLE`` line, never Qt's abort.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from desktop import platform_check

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
QT_ABORT = "Could not load the Qt platform plugin"
#: Libraries every Linux with Python has (glibc, the C++ runtime, zlib): not ours to install.
BASE_LIBRARIES = {"libc.so.6", "libm.so.6", "libgcc_s.so.1", "libstdc++.so.6", "libpthread.so.0", "libdl.so.2",
                  "librt.so.1", "ld-linux-x86-64.so.2", "libz.so.1", "libzstd.so.1"}


def _needed(path: Path) -> list[str]:
    """DT_NEEDED entries of a 64-bit little-endian ELF shared library (no binutils needed)."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, f"{path.name}: not an ELF64 LE file"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    dynamic = next(s for s in sections if s[1] == 6)  # SHT_DYNAMIC
    strtab = sections[dynamic[6]]  # sh_link: its string table
    names = []
    for offset in range(dynamic[4], dynamic[4] + dynamic[5], 16):
        tag, value = struct.unpack_from("<qQ", data, offset)
        if tag == 0:
            break
        if tag == 1:  # DT_NEEDED
            start = strtab[4] + value
            names.append(data[start:data.index(b"\0", start)].decode())
    return names


def _desktop(*args: str, env: dict[str, str], tmp_path: Path, drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``medvision desktop ARGS`` (the console script beside this Python), as a user runs it."""
    exe = shutil.which("medvision", path=str(Path(sys.executable).parent))
    assert exe, "the medvision console script is not installed beside this Python"
    environment = {k: v for k, v in os.environ.items() if k not in drop} | {"MEDVISION_HOME": str(tmp_path / "home")}
    environment |= env
    return subprocess.run([exe, "desktop", *args], capture_output=True, text=True, env=environment, timeout=120)


def _one_coded_line(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    assert QT_ABORT not in run.stderr + run.stdout
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("DISPLAY_UNAVAILABLE: "), lines[0]
    return lines[0]


def _absent_display() -> str:
    """An X display number no server listens on (no socket, no lock file)."""
    for number in range(4242, 4342):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            return f":{number}"
    raise AssertionError("no free X display number")


@pytest.fixture
def xvfb():
    """A real X server (Xvfb) on a display it picks itself; its DISPLAY value."""
    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.fail("Xvfb is missing: test.sh installs the Debian package xvfb (APT_PACKAGES)")
    read, write = os.pipe()
    server = subprocess.Popen([exe, "-displayfd", str(write), "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                              pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    try:
        with os.fdopen(read) as pipe:
            number = pipe.readline().strip()
        assert number.isdigit(), "Xvfb did not report its display"
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(30)


# -- the package list --------------------------------------------------------------------------
def test_every_library_the_xcb_plugin_needs_maps_to_a_listed_package() -> None:
    """The direct needs of libqxcb.so and the Qt libraries under it that the wheel does not
    bundle each map to a Debian package, and each such package is in the install list."""
    table = platform_check.runtime_table()["debian"]
    qt = platform_check.plugin_file("xcb", platform_check.plugin_dirs({})).parents[2]
    bundled = {p.name for p in (qt / "lib").iterdir()}
    files = [qt / "plugins" / "platforms" / "libqxcb.so", *(qt / "plugins" / "xcbglintegrations").glob("*.so")]
    files += [qt / "lib" / f"libQt6{name}.so.6" for name in ("XcbQpa", "Gui", "Widgets", "Core", "DBus")]
    needed = {lib for f in files for lib in _needed(f)} - bundled - BASE_LIBRARIES
    assert "libxcb-cursor.so.0" in needed and "libxcb-icccm.so.4" in needed  # the parser reads real entries
    unmapped = sorted(lib for lib in needed if lib not in table["sonames"])
    assert not unmapped, f"add these to desktop/qt_runtime.json: {unmapped}"
    packages = {table["sonames"][lib] for lib in needed}
    assert packages <= set(table["install"]), sorted(packages - set(table["install"]))
    assert {"libxcb-cursor0", "libxcb-icccm4", "libxcb-keysyms1"} <= set(table["install"])


def test_run_test_install_and_readme_list_the_same_packages() -> None:
    want = platform_check.runtime_table()["debian"]["install"]
    shell = subprocess.run(["bash", "-c", 'source packaging/dev_env.sh && echo "${QT_RUNTIME_PACKAGES[*]}" && '
                            'echo "${APT_PACKAGES[*]}"'], cwd=REPO, capture_output=True, text=True, check=True)
    runtime, apt = (line.split() for line in shell.stdout.splitlines())
    assert runtime == want and set(want) <= set(apt)  # ./run.sh and ./test.sh install them as root
    install_sh = (REPO / "packaging" / "install.sh").read_text()
    listed = re.search(r"QT_RUNTIME_PACKAGES=\(([^)]*)\)", install_sh)
    assert listed and listed.group(1).split() == want
    readme = (REPO / "packaging" / "README.md").read_text()
    assert all(f" {pkg}" in readme for pkg in want), [p for p in want if f" {p}" not in readme]


def test_install_hint_names_packages_and_a_generic_way_for_unknown_libraries() -> None:
    hint = platform_check.install_hint(["libxcb-cursor.so.0", "libxcb-icccm.so.4", "libfoo-unheard.so.7"])
    assert "install libxcb-cursor0 libxcb-icccm4" in hint
    assert "libfoo-unheard.so.7" in hint and ("apt-file search" in hint or "dnf provides" in hint)


# -- the real plugins ------------------------------------------------------------------------
def test_the_real_xcb_plugin_loads_here() -> None:
    plugin = platform_check.plugin_file("xcb", platform_check.plugin_dirs({}))
    assert plugin is not None and plugin.name == "libqxcb.so"
    failed = platform_check.unloadable_libraries(plugin)
    assert failed is None, f"libqxcb.so cannot load: {failed} (./test.sh installs desktop/qt_runtime.json's packages)"


def test_offscreen_passes_and_no_display_is_said_so() -> None:
    result = platform_check.check({"QT_QPA_PLATFORM": "offscreen"})
    assert result.ok and result.platform == "offscreen", result.line
    none = platform_check.check({"HOME": "/nonexistent"})
    assert not none.ok and none.line.startswith("DISPLAY_UNAVAILABLE: no display")
    assert platform_check.requested_platforms({"DISPLAY": ":0"}) == ["xcb"]
    assert platform_check.requested_platforms({"WAYLAND_DISPLAY": "wayland-0"}) == ["wayland"]
    assert platform_check.requested_platforms({"DISPLAY": ":0", "WAYLAND_DISPLAY": "w", "XDG_SESSION_TYPE": "wayland"}) \
        == ["wayland", "xcb"]
    assert platform_check.requested_platforms({"QT_QPA_PLATFORM": "wayland-egl;xcb:dpi=96", "DISPLAY": ":0"}) \
        == ["wayland-egl", "xcb"]
    unknown = platform_check.check({"QT_QPA_PLATFORM": "nosuchplatform"})
    assert not unknown.ok and "xcb" in unknown.line and "offscreen" in unknown.line  # lists what is available


def test_the_desktop_starts_on_the_real_xcb_plugin_under_xvfb(xvfb: str, rg1_path: Path, model_pack: Path,
                                                              tmp_path: Path) -> None:
    """No QT_QPA_PLATFORM: the check picks xcb from DISPLAY, Qt uses it, RG1 shows; the
    screen grab (through the X server) is saved as a test artefact."""
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "WAYLAND_DISPLAY")}
    env |= {"DISPLAY": xvfb, "MEDVISION_HOME": str(tmp_path / "home"), "MEDVISION_MODEL_PACK": str(model_pack)}
    check = subprocess.run([sys.executable, "-m", "desktop", "--check-platform"], capture_output=True, text=True,
                           env=env, timeout=60)
    assert check.returncode == 0 and check.stdout.startswith("ok: xcb"), (check.stdout, check.stderr)
    shot = tmp_path / "desktop_xcb_rg1.png"
    run = subprocess.run([sys.executable, str(HERE / "xcb_desktop.py"), str(rg1_path), str(shot)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "platform=xcb" in run.stdout
    assert QT_ABORT not in run.stderr
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1600, 1000)
        gray = image.convert("L")
        assert len(gray.getcolors(256)) > 64  # a window with an image on it, not an empty screen
    target = os.environ.get("MEDVISION_TEST_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / shot.name)


# -- the error paths, through `medvision desktop` -------------------------------------------
def test_a_plugin_dependency_that_cannot_load_is_one_coded_line(rg1_path: Path, tmp_path: Path) -> None:
    broken = tmp_path / "libs"
    broken.mkdir()
    (broken / "libxcb-cursor.so.0").write_bytes(b"")  # found first, refused by the loader
    run = _desktop(str(rg1_path), env={"QT_QPA_PLATFORM": "xcb", "DISPLAY": _absent_display(),
                                       "LD_LIBRARY_PATH": f"{broken}:{os.environ.get('LD_LIBRARY_PATH', '')}"},
                   tmp_path=tmp_path)
    line = _one_coded_line(run)
    assert 'the Qt platform plugin "xcb" cannot load: missing libxcb-cursor.so.0' in line
    assert "libxcb-cursor0" in line and ("apt-get install" in line or "dnf install" in line)
    assert "./run.sh --headless" in line
    assert str(tmp_path) not in line  # names the library, not where it was found
    assert not (tmp_path / "home").exists()  # stopped before the app opened its data directory


def test_a_display_that_does_not_exist_is_one_coded_line(tmp_path: Path) -> None:
    display = _absent_display()
    run = _desktop(env={"DISPLAY": display}, tmp_path=tmp_path, drop=("QT_QPA_PLATFORM", "WAYLAND_DISPLAY"))
    line = _one_coded_line(run)
    assert f'cannot connect to the display "{display}" (DISPLAY)' in line


def test_no_display_at_all_says_how_to_run_headless(tmp_path: Path) -> None:
    run = _desktop(env={}, tmp_path=tmp_path, drop=("QT_QPA_PLATFORM", "WAYLAND_DISPLAY", "DISPLAY"))
    line = _one_coded_line(run)
    assert "no display: neither DISPLAY nor WAYLAND_DISPLAY is set" in line
    assert "./run.sh --headless" in line and "medvision analyze" in line
    check = subprocess.run([sys.executable, "-m", "desktop", "--check-platform"], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items()
                                if k not in ("QT_QPA_PLATFORM", "WAYLAND_DISPLAY", "DISPLAY")}, timeout=60)
    assert check.returncode == 2 and check.stderr.strip() == line


def test_the_runtime_table_is_package_data() -> None:
    """qt_runtime.json travels with the package (pyproject's package-data, the frozen app's datas)."""
    assert json.loads((REPO / "desktop" / "qt_runtime.json").read_text())["debian"]["install"]
    spec = (REPO / "packaging" / "medvision.spec").read_text()
    assert '"desktop"' in spec and "**/*.json" in spec
