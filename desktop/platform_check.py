"""Can Qt open a window here? Checked before the ``QApplication`` exists, without importing Qt.

Qt itself, when its platform plugin cannot load, prints "Could not load the Qt platform
plugin ... Reinstalling the application may fix this problem" and aborts. The desktop
asks first and, when the answer is no, exits 2 with one coded line that says why and
what to do::

    DISPLAY_UNAVAILABLE: the Qt platform plugin "xcb" cannot load: missing libxcb-icccm.so.4,
    libxcb-keysyms.so.1 (install: apt-get install libxcb-icccm4 libxcb-keysyms1); ...

The check (Linux only; Qt on Windows and macOS brings what its plugins need):

1. the platform: ``QT_QPA_PLATFORM`` (a ``;`` list: the first that passes wins), else
   Wayland in a Wayland session, X11 (``xcb``) when ``DISPLAY`` is set, Wayland when only
   ``WAYLAND_DISPLAY`` is; neither set is "no display" (run headless);
2. the plugin file under PySide6's ``Qt/plugins/platforms`` (or ``QT_QPA_PLATFORM_PLUGIN_PATH``
   / ``QT_PLUGIN_PATH``) is loaded with ``dlopen`` (ctypes), as Qt would; when that fails,
   ``ldd`` (when present) names every library that is missing or broken, else the
   ``dlopen`` error names the first; each maps to a package through ``qt_runtime.json``;
3. for ``xcb`` and ``wayland`` the display answers a connection (libxcb / libwayland-client).

The platform found is put in ``QT_QPA_PLATFORM`` (when unset) so that Qt uses the very
plugin that was checked. ``python -m desktop --check-platform`` runs the check alone.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

CODE = "DISPLAY_UNAVAILABLE"
HEADLESS = "run headless instead: ./run.sh --headless, or medvision analyze FILE"
#: Platforms that talk to a display server, and the variable that names it.
DISPLAY_VARIABLE = {"xcb": "DISPLAY", "wayland": "WAYLAND_DISPLAY"}


@dataclass
class PlatformCheck:
    """The outcome: ``platform`` will work, or ``problem`` says (in one line) why none does."""

    platform: str | None = None
    problem: str | None = None
    detail: str = ""
    missing: list[str] = field(default_factory=list)  # library file names that did not load

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def line(self) -> str:
        """The coded line the desktop prints and exits with (2)."""
        return f"{CODE}: {self.problem}" if self.problem else f"ok: {self.platform} {self.detail}".rstrip()


@cache
def runtime_table() -> dict:
    """``qt_runtime.json``: the packages to install and which package holds which library."""
    return json.loads((Path(__file__).with_name("qt_runtime.json")).read_text(encoding="utf-8"))


def requested_platforms(env: Mapping[str, str]) -> list[str]:
    """The platform plugin names Qt will try, in order; ``[]`` when there is no display at all."""
    value = env.get("QT_QPA_PLATFORM", "").strip()
    if value:
        return [part.split(":", 1)[0].strip() for part in value.split(";") if part.split(":", 1)[0].strip()]
    display, wayland = env.get("DISPLAY", "").strip(), env.get("WAYLAND_DISPLAY", "").strip()
    names: list[str] = []
    if wayland and env.get("XDG_SESSION_TYPE", "").lower() == "wayland":
        names.append("wayland")
    if display:
        names.append("xcb")
    if wayland and "wayland" not in names:
        names.append("wayland")
    return names


def plugin_dirs(env: Mapping[str, str]) -> list[Path]:
    """Where Qt looks for platform plugins: the environment's folders, then PySide6's own."""
    dirs: list[Path] = []
    if env.get("QT_QPA_PLATFORM_PLUGIN_PATH"):
        dirs.append(Path(env["QT_QPA_PLATFORM_PLUGIN_PATH"]))
    dirs += [Path(entry) / "platforms" for entry in env.get("QT_PLUGIN_PATH", "").split(os.pathsep) if entry]
    roots: list[Path] = []
    try:
        spec = importlib.util.find_spec("PySide6")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        roots += [Path(location) for location in spec.submodule_search_locations]
    if getattr(sys, "_MEIPASS", None):  # the frozen app (PyInstaller): PySide6 beside the executable
        roots.append(Path(sys._MEIPASS) / "PySide6")
    dirs += [root / "Qt" / "plugins" / "platforms" for root in roots]
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def plugin_file(name: str, dirs: list[Path]) -> Path | None:
    """The plugin library for platform ``name`` (``wayland-egl`` and the like live in ``libqwayland.so``)."""
    stems = [name] + ([name.split("-", 1)[0]] if "-" in name else [])
    for directory in dirs:
        for stem in stems:
            candidate = directory / f"libq{stem}.so"
            if candidate.is_file():
                return candidate
    return None


def available_platforms(dirs: list[Path]) -> list[str]:
    names = {m.group(1) for d in dirs for p in d.glob("libq*.so") if (m := re.fullmatch(r"libq(.+)\.so", p.name))}
    return sorted(names)


_LDD_NOT_FOUND = re.compile(r"^\s*(?P<lib>\S+)\s+=>\s+not found", re.M)
_LDD_ERROR = re.compile(r"error while loading shared libraries: (?P<path>[^:\s]+): (?P<reason>[^\n]+)")
_LDD_VERSION = re.compile(r"(?P<path>[^\s:]+): version .(?P<version>[^'`\s]+). not found")
_DLOPEN_MISSING = re.compile(r"^(?P<lib>[^:\s]+): cannot open shared object file")
_DLOPEN_BROKEN = re.compile(r"^(?P<path>/[^:]+): (?P<reason>.+)$")


def unloadable_libraries(plugin: Path) -> tuple[list[tuple[str, str]], str] | None:
    """``None`` when ``plugin`` loads; else ([(library, reason)], the loader's own message).

    ``reason`` is ``""`` for a library that is not found, else what is wrong with the one
    found ("file too short", "needs GLIBCXX_3.4.32", ...).
    """
    try:
        ctypes.CDLL(str(plugin))
    except OSError as exc:
        error = " ".join(str(exc).split())
    else:
        return None
    problems: dict[str, str] = {}
    ldd = shutil.which("ldd")
    if ldd:
        try:
            run = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, timeout=30,
                                 env={**os.environ, "LC_ALL": "C"})
            text = run.stdout + "\n" + run.stderr
        except (OSError, subprocess.SubprocessError):
            text = ""
        for match in _LDD_NOT_FOUND.finditer(text):
            problems.setdefault(match["lib"], "")
        for match in _LDD_ERROR.finditer(text):
            problems.setdefault(Path(match["path"]).name, match["reason"].strip())
        for match in _LDD_VERSION.finditer(text):
            problems.setdefault(Path(match["path"]).name, f"needs {match['version']}")
    if not problems:
        if match := _DLOPEN_MISSING.match(error):
            problems[Path(match["lib"]).name] = ""
        elif match := _DLOPEN_BROKEN.match(error):
            problems[Path(match["path"]).name] = match["reason"].strip()
    return list(problems.items()), error


def _package_manager() -> str:
    if shutil.which("apt-get") or Path("/etc/debian_version").exists():
        return "debian"
    if shutil.which("dnf") or shutil.which("yum"):
        return "fedora"
    return "debian"


def install_hint(libraries: list[str]) -> str:
    """``install: apt-get install PKG...`` for ``libraries`` (plus how to find the unlisted ones)."""
    family = _package_manager()
    table = runtime_table()[family]
    packages = list(dict.fromkeys(table["sonames"][lib] for lib in libraries if lib in table["sonames"]))
    unknown = [lib for lib in libraries if lib not in table["sonames"]]
    parts = []
    if packages:
        parts.append(f"install: {table['command']} {' '.join(packages)}")
    if unknown:
        finder = "apt-file search {}" if family == "debian" else "dnf provides '*/{}'"
        parts.append(f"find the package that provides {', '.join(unknown)} with {finder.format(unknown[0])}")
    return "; ".join(parts)


def _connects(platform: str, env: Mapping[str, str]) -> bool:
    """Whether the display server of ``platform`` accepts a connection (the plugin loaded)."""
    if platform == "xcb":
        lib = ctypes.CDLL("libxcb.so.1")
        lib.xcb_connect.restype = ctypes.c_void_p
        lib.xcb_connect.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)]
        lib.xcb_connection_has_error.argtypes = [ctypes.c_void_p]
        lib.xcb_disconnect.argtypes = [ctypes.c_void_p]
        connection = lib.xcb_connect(env["DISPLAY"].encode(), None)
        failed = not connection or lib.xcb_connection_has_error(connection) != 0
        if connection:
            lib.xcb_disconnect(connection)
        return not failed
    lib = ctypes.CDLL("libwayland-client.so.0")
    lib.wl_display_connect.restype = ctypes.c_void_p
    lib.wl_display_connect.argtypes = [ctypes.c_char_p]
    lib.wl_display_disconnect.argtypes = [ctypes.c_void_p]
    name = env.get("WAYLAND_DISPLAY") or None
    connection = lib.wl_display_connect(name.encode() if name else None)
    if connection:
        lib.wl_display_disconnect(connection)
    return bool(connection)


def check_platform(name: str, env: Mapping[str, str], dirs: list[Path] | None = None) -> PlatformCheck:
    """Whether platform plugin ``name`` loads and (for xcb / wayland) its display answers."""
    dirs = plugin_dirs(env) if dirs is None else dirs
    kind = name.split("-", 1)[0]
    variable = DISPLAY_VARIABLE.get(kind)
    if kind == "xcb" and not env.get("DISPLAY", "").strip():
        return PlatformCheck(name, f'the Qt platform "{name}" needs an X display and DISPLAY is not set; {HEADLESS}')
    if not dirs:  # PySide6 not found where we look: leave the verdict to Qt
        return PlatformCheck(name, detail="(plugin folder not found: not checked)")
    plugin = plugin_file(name, dirs)
    if plugin is None:
        return PlatformCheck(name, f'the Qt platform plugin "{name}" is not installed (available: '
                                   f'{", ".join(available_platforms(dirs))})')
    failed = unloadable_libraries(plugin)
    if failed is not None:
        libraries, error = failed
        if not libraries:
            return PlatformCheck(name, f'the Qt platform plugin "{name}" cannot load: {error}; {HEADLESS}')
        named = ", ".join(f"{lib} ({reason})" if reason else lib for lib, reason in libraries)
        hint = install_hint([lib for lib, _ in libraries])
        return PlatformCheck(name, f'the Qt platform plugin "{name}" cannot load: missing {named} ({hint}); '
                                   f"or {HEADLESS}", missing=[lib for lib, _ in libraries])
    if variable is not None:
        shown = env.get(variable) or ("wayland-0" if kind == "wayland" else "")
        try:
            answers = _connects(kind, env)
        except OSError as exc:  # the plugin loaded, so its client library should too
            answers, shown = False, f"{shown}: {exc}"
        if not answers:
            return PlatformCheck(name, f'the Qt platform "{name}" cannot connect to the display "{shown}" '
                                       f"({variable}): no display server answers there, or this user may not "
                                       f"use it; {HEADLESS}")
        return PlatformCheck(name, detail=f'(plugin {plugin.name} loads; display "{shown}" answers)')
    return PlatformCheck(name, detail=f"(plugin {plugin.name} loads)")


def check(env: Mapping[str, str] | None = None) -> PlatformCheck:
    """The first requested platform that will work, or the reason none will (first one's)."""
    env = os.environ if env is None else env
    if not sys.platform.startswith("linux"):
        return PlatformCheck(env.get("QT_QPA_PLATFORM") or "default", detail="(not checked on this OS)")
    names = requested_platforms(env)
    if not names:
        return PlatformCheck(None, f"no display: neither DISPLAY nor WAYLAND_DISPLAY is set (and no "
                                   f"QT_QPA_PLATFORM); {HEADLESS} (QT_QPA_PLATFORM=offscreen draws without a screen)")
    dirs = plugin_dirs(env)
    results = []
    for name in names:
        result = check_platform(name, env, dirs)
        if result.ok:
            return result
        results.append(result)
    if len(results) == 1:
        return results[0]
    return PlatformCheck(None, " | ".join(r.problem or "" for r in results),
                         missing=[lib for r in results for lib in r.missing])


_ensured: PlatformCheck | None = None


def ensure() -> PlatformCheck:
    """Exit 2 with the coded line unless a platform works; then make Qt use the one checked."""
    global _ensured
    if _ensured is not None:
        return _ensured
    result = check()
    if not result.ok:
        sys.stderr.write(result.line + "\n")
        sys.stderr.flush()
        raise SystemExit(2)
    if result.platform and sys.platform.startswith("linux") and not os.environ.get("QT_QPA_PLATFORM"):
        os.environ["QT_QPA_PLATFORM"] = result.platform
    _ensured = result
    return result


def main() -> int:
    """``python -m desktop --check-platform``: print the verdict; 0 when the desktop can start, else 2."""
    result = check()
    stream = sys.stdout if result.ok else sys.stderr
    stream.write(result.line + "\n")
    return 0 if result.ok else 2


__all__ = ["CODE", "PlatformCheck", "check", "check_platform", "ensure", "install_hint", "main",
           "plugin_dirs", "plugin_file", "requested_platforms", "runtime_table", "unloadable_libraries"]
