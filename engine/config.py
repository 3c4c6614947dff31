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

Retention (see :class:`RetentionPolicy`; a positive number, or ``keep``):

``MEDVISION_RETAIN_RECEIVED_DAYS``  studies received by the DICOM node (default 30 days)
``MEDVISION_RETAIN_OPENED_DAYS``    sessions of files opened in the desktop or CLI (default keep)
``MEDVISION_RETAIN_MCP_HOURS``      sessions an MCP agent created (default 24 hours, the spec's TTL)
``MEDVISION_CLEANUP_INTERVAL_S``    how often the DICOM node and the desktop purge (default 3600)
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
#: Assembled volumes kept per process (``MEDVISION_VOLUME_CACHE_MB``), least recently used first out.
DEFAULT_VOLUME_CACHE_MB = 1024


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


#: Relevant priors chosen per study unless ``MEDVISION_PRIOR_COUNT`` says otherwise.
DEFAULT_PRIOR_COUNT = 2
#: Where a session came from: received by the DICOM node, a file opened, created over MCP.
SESSION_SOURCES = ("dicom", "file", "mcp")


def _env_retention(name: str, default: float | None) -> float | None:
    """A retention period from the environment: a positive number, or ``keep`` (None)."""
    text = os.environ.get(name, "").strip().lower()
    if not text:
        return default
    if text == "keep":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a positive number or 'keep', not {text[:40]!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a positive number or 'keep', not {text[:40]!r}")
    return value


@dataclass(frozen=True)
class RetentionPolicy:
    """How long a session is kept after its last change, per source; ``None`` keeps it.

    The product spec sets a 24-hour TTL on sessions (``session.ttl: 86400``) with an hourly
    cleanup (``cleanup_interval: 3600``): that is the MCP default, for sessions a local agent
    creates and forgets. Received studies have a copy in the PACS that sent them, so the
    workstation keeps them 30 days by default; files opened by hand are kept until deleted.
    A pinned session is kept whatever its source's period.
    """

    received_days: float | None = 30.0
    opened_days: float | None = None
    mcp_hours: float | None = 24.0
    cleanup_interval_s: float = 3600.0

    def max_age_s(self, source: str) -> float | None:
        """Seconds a session of ``source`` is kept after its last change (None: kept)."""
        if source == "dicom":
            return None if self.received_days is None else self.received_days * 86400
        if source == "mcp":
            return None if self.mcp_hours is None else self.mcp_hours * 3600
        return None if self.opened_days is None else self.opened_days * 86400

    def describe(self) -> dict[str, float | None]:
        """The policy as JSON: seconds kept per source (null: kept), and the cleanup interval."""
        return {**{source: self.max_age_s(source) for source in SESSION_SOURCES},
                "cleanup_interval_s": self.cleanup_interval_s}

    @classmethod
    def from_env(cls) -> RetentionPolicy:
        """The policy from ``MEDVISION_RETAIN_*`` and ``MEDVISION_CLEANUP_INTERVAL_S``."""
        defaults = cls()
        return cls(
            received_days=_env_retention("MEDVISION_RETAIN_RECEIVED_DAYS", defaults.received_days),
            opened_days=_env_retention("MEDVISION_RETAIN_OPENED_DAYS", defaults.opened_days),
            mcp_hours=_env_retention("MEDVISION_RETAIN_MCP_HOURS", defaults.mcp_hours),
            cleanup_interval_s=float(env_int("MEDVISION_CLEANUP_INTERVAL_S", int(defaults.cleanup_interval_s))),
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
    #: Relevant priors chosen per study (``MEDVISION_PRIOR_COUNT``).
    prior_count: int = DEFAULT_PRIOR_COUNT
    volume_cache_mb: int = DEFAULT_VOLUME_CACHE_MB
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
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
            prior_count=env_int("MEDVISION_PRIOR_COUNT", DEFAULT_PRIOR_COUNT),
            volume_cache_mb=env_int("MEDVISION_VOLUME_CACHE_MB", DEFAULT_VOLUME_CACHE_MB),
            retention=RetentionPolicy.from_env(),
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
