"""Where the engine keeps things and how hard it may work, read once from the environment.

Environment variables (all optional):

``MEDVISION_HOME``         data directory (default: the platform user-data dir)
``MEDVISION_MODEL_PACK``   model pack directory (default: ``$MEDVISION_HOME/models/default``)
``MEDVISION_DB_KEY``       64 hex digits: the raw 256-bit database key
``MEDVISION_KEYRING``      ``0`` to skip the OS keyring in the key provider chain
``MEDVISION_THREADS``      intra-op threads for ONNX Runtime (default: min(4, cores))
``MEDVISION_PROVIDERS``    comma list of ONNX Runtime providers to allow (default: CUDA, CPU)
``MEDVISION_PRECISION``    ``int8`` / ``fp32``: override the pack's default precision
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
#: The largest image file the engine reads (2 GiB): above any real radiograph or CT series
#: file a workstation is handed, below what would exhaust memory when read whole.
DEFAULT_MAX_IMAGE_FILE_BYTES = 2 * 1024**3


def _default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class Settings:
    """Resolved engine settings; build with :meth:`from_env` or directly in tests."""

    home: Path
    model_pack: Path
    threads: int = field(default_factory=_default_threads)
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    precision: str | None = None
    use_keyring: bool = True
    export_dir: Path | None = None
    max_image_file_bytes: int = DEFAULT_MAX_IMAGE_FILE_BYTES

    @property
    def export_root(self) -> Path:
        """Where exports go when the caller names no path: ``export_dir``, else
        ``MEDVISION_EXPORT_DIR``, else ``<user documents>/MedVision Exports``. Exports are
        the plaintext files a user asked for, so they live outside the encrypted data dir."""
        configured = self.export_dir or os.environ.get("MEDVISION_EXPORT_DIR")
        if configured:
            return Path(configured).expanduser()
        return Path(platformdirs.user_documents_dir()) / "MedVision Exports"

    @classmethod
    def from_env(
        cls, home: str | Path | None = None, model_pack: str | Path | None = None
    ) -> Settings:
        """Settings from explicit arguments first, then the environment, then defaults."""
        env = os.environ
        home_path = Path(
            home or env.get("MEDVISION_HOME") or platformdirs.user_data_dir("medvision", False)
        ).expanduser()
        pack = Path(
            model_pack or env.get("MEDVISION_MODEL_PACK") or home_path / "models" / "default"
        ).expanduser()
        threads = int(env["MEDVISION_THREADS"]) if env.get("MEDVISION_THREADS") else _default_threads()
        providers = tuple(
            p.strip() for p in env.get("MEDVISION_PROVIDERS", ",".join(DEFAULT_PROVIDERS)).split(",")
            if p.strip()
        )
        return cls(
            home=home_path,
            model_pack=pack,
            threads=threads,
            providers=providers,
            precision=env.get("MEDVISION_PRECISION") or None,
            use_keyring=env.get("MEDVISION_KEYRING", "1") != "0",
        )
