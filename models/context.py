"""What every component builder gets from the pack build (its own module, so builders and
:mod:`models.pack`, which lists them, do not import each other)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.calibration import CalibrationImages


@dataclass
class BuildContext:
    """What every component builder gets: where to write, which weights, which images."""

    out_dir: Path
    images: CalibrationImages
    weights_dir: Path | None
    threads: int

    @property
    def dev(self) -> bool:  # noqa: D102
        return self.weights_dir is None
