"""What every component builder gets from the pack build (its own module, so builders and
:mod:`models.pack`, which lists them, do not import each other)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from models.calibration import CalibrationImages, load_images


@dataclass
class BuildContext:
    """What every component builder gets: where to write, which weights, which images."""

    out_dir: Path
    calibration_dir: Path | None
    weights_dir: Path | None
    threads: int

    @property
    def dev(self) -> bool:  # noqa: D102
        return self.weights_dir is None

    @cached_property
    def images(self) -> CalibrationImages:
        """The calibration images (``calibration_dir``, else pydicom-data's), decoded on first use.

        Builders read their checkpoint before they ask for images, so a bad checkpoint is
        refused before any image is decoded, and the language model never decodes one.
        """
        return load_images(self.calibration_dir)
