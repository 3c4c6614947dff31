"""dciodvfy (dicom3tools) as a test check: no error allowed, warnings returned."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy's warnings for ``path``; fails the test on any error or a missing tool."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy is not installed (apt-get install dicom3tools): the DICOM exports cannot be checked")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    lines = [line.strip() for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    assert not errors, "dciodvfy errors:\n" + "\n".join(errors) + "\nwarnings:\n" + "\n".join(warnings)
    return warnings
