"""Where the engine keeps things and how hard it may work, read once from the environment.

Environment variables (all optional):

``MEDVISION_HOME``         data directory (default: the platform user-data dir)
``MEDVISION_MODEL_PACK``   model pack directory (default: ``$MEDVISION_HOME/models/default``)
``MEDVISION_DB_KEY``       64 hex digits: the raw 256-bit database key
``MEDVISION_KEYRING``      ``0`` to skip the OS keyring in the key provider chain
``MEDVISION_THREADS``      intra-op threads for ONNX Runtime (default: min(4, cores))
``MEDVISION_PROVIDERS``    comma list of ONNX Runtime providers to allow (default: CUDA, CPU)
``MEDVISION_PRECISION``    ``int8`` / ``fp32``: override the pack's default precision
``MEDVISION_AUDIT_IDENTIFIERS``  comma list of the identifiers audit records hold, among
                           ``AUDIT_IDENTIFIERS`` (default: session_id,image_id,study_uid)

Decoding limits (positive integers; see :class:`DecodeLimits` for why these defaults):

``MEDVISION_MAX_IMAGE_PIXELS``      rows x columns of one frame (default 67,108,864 = 8192 x 8192)
``MEDVISION_MAX_PIXEL_DATA_BYTES``  rows x columns x samples x frames x bytes per sample of the
                                    whole Pixel Data, as declared (default 2 GiB)
``MEDVISION_MAX_INFLATED_BYTES``    inflated size of a Deflated Explicit VR Little Endian dataset
                                    (default 512 MiB)
``MEDVISION_DECODE_CACHE_BYTES``    bytes of decoded frames kept per process (default 512 MiB)
``MEDVISION_MAX_VOLUME_BYTES``      float32 voxels of one assembled volume (default 4 GiB)
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


MiB = 1024 * 1024

#: Identifiers an audit record may hold (the site's policy picks among them; a patient's
#: name is never one): session and image ids, Study and SOP Instance UID, Patient ID.
AUDIT_IDENTIFIERS = ("session_id", "image_id", "study_uid", "sop_uid", "patient_id")
DEFAULT_AUDIT_IDENTIFIERS = ("session_id", "image_id", "study_uid")

#: Decoded frames (``raw`` + ``pixels``) one process keeps for the images being flipped between.
DEFAULT_DECODE_CACHE_BYTES = 512 * MiB


def _default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def env_int(name: str, default: int) -> int:
    """A positive integer from the environment (``_`` separators allowed), else ``default``."""
    text = os.environ.get(name, "").strip().replace("_", "")
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, not {text[:40]!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, not {value}")
    return value


@dataclass(frozen=True)
class DecodeLimits:
    """How big an image may be before it is decoded; checked before anything is allocated.

    ``max_image_pixels`` (rows x columns of one frame, DICOM, PNG and JPEG alike):
    8192 x 8192. The largest real radiographs stay far below it (a 43 x 43 cm CR at
    0.1 mm is 4300 x 4300, a full-field mammogram at 50 um 4728 x 5928, about 28 M),
    and so does a 48 MP photograph (8000 x 6000); the largest frame in pydicom's and
    pydicom-data's test files is 1955 x 1841. A 16-bit frame at the limit needs about
    0.4 GB decoded (stored values plus float32 values). It is also below Pillow's own
    warning threshold (89.5 M), so a 9400 x 9400 PNG (88 M) is refused too.

    ``max_pixel_data_bytes`` (rows x columns x samples x frames x bytes per sample, the
    whole Pixel Data as the header declares it): 2 GiB. A 2000-slice enhanced CT
    (512 x 512 x 2 bytes) is 1 GiB and a 60-slice breast tomosynthesis volume at
    3328 x 4096 about 1.6 GB; frames are decoded one at a time, so this is a sanity
    bound on what a header may promise.

    ``max_inflated_bytes`` (a Deflated Explicit VR Little Endian dataset, inflated):
    512 MiB. Deflate carries small objects in practice (SR, ECG, small US/SC; pydicom's
    only sample inflates to 262 kB) and the largest frame allowed above is 128 MiB of
    16-bit pixels. Inflation is streamed and stops at the limit, so a bomb costs at most
    this much memory in the decoder and a few chunks in the DICOM node.

    ``max_volume_bytes`` (slices x rows x columns x 4, the float32 voxels of one volume
    assembled from a series, checked before the array is allocated): 4 GiB. A
    2,000-slice 512 x 512 CT is 2 GiB; a 4,000-slice one is refused (``VOLUME_TOO_LARGE``).
    """

    max_image_pixels: int = 8192 * 8192
    max_pixel_data_bytes: int = 2 * 1024 * MiB
    max_inflated_bytes: int = 512 * MiB
    max_volume_bytes: int = 4 * 1024 * MiB

    @classmethod
    def from_env(cls) -> DecodeLimits:
        """The limits from ``MEDVISION_MAX_*``, each defaulting as above."""
        defaults = cls()
        return cls(
            max_image_pixels=env_int("MEDVISION_MAX_IMAGE_PIXELS", defaults.max_image_pixels),
            max_pixel_data_bytes=env_int("MEDVISION_MAX_PIXEL_DATA_BYTES", defaults.max_pixel_data_bytes),
            max_inflated_bytes=env_int("MEDVISION_MAX_INFLATED_BYTES", defaults.max_inflated_bytes),
            max_volume_bytes=env_int("MEDVISION_MAX_VOLUME_BYTES", defaults.max_volume_bytes),
        )


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
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    decode_cache_bytes: int = DEFAULT_DECODE_CACHE_BYTES
    max_image_file_bytes: int = DEFAULT_MAX_IMAGE_FILE_BYTES
    #: Which identifiers audit records hold (``MEDVISION_AUDIT_IDENTIFIERS``).
    audit_identifiers: tuple[str, ...] = DEFAULT_AUDIT_IDENTIFIERS
    #: Off only to measure what auditing costs (benchmarks/bench_audit.py); no variable sets it.
    audit_enabled: bool = True

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
            limits=DecodeLimits.from_env(),
            decode_cache_bytes=env_int("MEDVISION_DECODE_CACHE_BYTES", DEFAULT_DECODE_CACHE_BYTES),
            audit_identifiers=audit_identifiers_from_env(),
        )


def audit_identifiers_from_env() -> tuple[str, ...]:
    """``MEDVISION_AUDIT_IDENTIFIERS`` checked against :data:`AUDIT_IDENTIFIERS` (default when unset)."""
    text = os.environ.get("MEDVISION_AUDIT_IDENTIFIERS", "").strip()
    if not text:
        return DEFAULT_AUDIT_IDENTIFIERS
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in AUDIT_IDENTIFIERS]
    if unknown:
        raise ValueError(f"MEDVISION_AUDIT_IDENTIFIERS: unknown identifier(s) {', '.join(unknown)[:80]};"
                         f" choose among {', '.join(AUDIT_IDENTIFIERS)}")
    return names
