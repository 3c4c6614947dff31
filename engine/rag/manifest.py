"""What a reference-library build reads: a manifest of image files and their reports.

Two layouts are accepted (``source="custom"``):

* **A CSV** with one row per image: ``image_path`` (relative to the CSV's folder), the
  report text (``report`` = the whole report, and/or sections ``findings``,
  ``impression``, ``indication``, ``history``, ``comparison``, ``technique``),
  ``diagnoses`` (``;``-separated), an optional ``case_id``, and label columns.
* **A folder** of DICOM/PNG/JPEG files (searched recursively, hidden files and
  ``*.csv`` skipped) plus an optional reports CSV with the same text and label
  columns, keyed by ``file_name`` (path relative to the folder, or a base name that is
  unique in the folder) or by ``sop_instance_uid``.

Label columns: every column that is not one of the names above and whose non-blank
values are all -1, 0 or 1 (``1.0`` style accepted, as in CheXpert) is a label named
after its header; a blank cell means "not labelled". Any other column (age, sex, ...)
is ignored and reported in the build result, so nothing unexpected is stored.

The dedup identity of an image is its SOP Instance UID for DICOM, else the SHA-256 of
the file (:func:`case_identity`).

Where a case came from is kept with it: the manifest's ``kind`` (``csv`` or ``folder``) and
``data_name`` (the CSV's or the folder's own name), the entry's ``file`` (relative to the
folder, or as the CSV wrote it: a base name when absolute) and, for a CSV, its ``row``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from engine.errors import ErrorCode, MedVisionError
from engine.imaging.decode import DECODE_ERRORS, JPEG_SIGNATURE, PNG_SIGNATURE

# Column name (lower case) -> report section.
REPORT_COLUMNS: dict[str, str] = {
    "report": "full",
    "full_report": "full",
    "report_text": "full",
    "findings": "findings",
    "impression": "impression",
    "indication": "indication",
    "history": "history",
    "clinical_history": "history",
    "comparison": "comparison",
    "technique": "technique",
}
DIAGNOSES_COLUMNS = ("diagnoses", "diagnosis")
IMAGE_PATH_COLUMN = "image_path"
FILE_NAME_COLUMNS = ("file_name", "filename", "image_path")
SOP_UID_COLUMN = "sop_instance_uid"
CASE_ID_COLUMN = "case_id"
RESERVED_COLUMNS = frozenset(
    {*REPORT_COLUMNS, *DIAGNOSES_COLUMNS, *FILE_NAME_COLUMNS, SOP_UID_COLUMN, CASE_ID_COLUMN}
)
DIAGNOSIS_SEPARATOR = ";"
LABEL_VALUES = {"1": 1, "+1": 1, "1.0": 1, "0": 0, "0.0": 0, "-0": 0, "-1": -1, "-1.0": -1}
CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
MAX_CSV_BYTES = 512 * 1024 * 1024
_SOP_INSTANCE_UID_TAG = 0x00080018
_RAW_DICOM_FIRST_GROUPS = (0x0002, 0x0008)


@dataclass(frozen=True)
class Annotation:
    """The text and labels of one case, as read from a manifest row."""

    case_id: str | None = None
    report: dict[str, str] = field(default_factory=dict)
    diagnoses: tuple[str, ...] = ()
    labels: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class InvalidAnnotation(Annotation):
    """A row that cannot be used; the build reports ``error`` for its image."""

    error: MedVisionError | None = None


@dataclass(frozen=True)
class ManifestEntry:
    """One image to ingest.

    ``file`` is how the image is named to the user (the manifest's relative path, or a
    base name for an absolute path); ``annotation`` is None when the text is looked up
    later by SOP Instance UID (folder layout) or when there is none; ``row`` is the CSV
    row the entry came from (the header is row 1), None for a folder's file.
    """

    file: str
    path: Path
    annotation: Annotation | None = None
    row: int | None = None


@dataclass
class Manifest:
    """Everything a build iterates over, plus what it reports about the input."""

    kind: str
    entries: list[ManifestEntry]
    fingerprint: str
    data_name: str
    label_columns: tuple[str, ...] = ()
    ignored_columns: tuple[str, ...] = ()
    by_sop_instance_uid: dict[str, Annotation] = field(default_factory=dict)
    _used_rows: set[int] = field(default_factory=set)
    _row_count: int = 0

    def annotation_for(self, entry: ManifestEntry, sop_instance_uid: str | None) -> Annotation:
        """The entry's annotation: its own row, else the row keyed by its SOP Instance UID."""
        if entry.annotation is not None:
            return entry.annotation
        if sop_instance_uid and sop_instance_uid in self.by_sop_instance_uid:
            annotation = self.by_sop_instance_uid[sop_instance_uid]
            self._used_rows.add(id(annotation))
            return annotation
        return Annotation()

    def unmatched_report_rows(self) -> int:
        """Rows of a folder's reports CSV that matched no image (so far)."""
        return self._row_count - len(self._used_rows)


@dataclass(frozen=True)
class CaseIdentity:
    """How a file is recognised again: ``dedup_key`` plus what it was derived from."""

    dedup_key: str
    sha256: str
    sop_instance_uid: str | None


def case_identity(data: bytes) -> CaseIdentity:
    """Dedup identity of an image file: ``sop:<SOP Instance UID>`` for DICOM, else ``sha256:<hex>``.

    Only the header is parsed (no pixel decoding), so recognising an image already in
    the library is cheap. A DICOM file without a usable SOP Instance UID falls back to
    the file hash.
    """
    sha256 = hashlib.sha256(data).hexdigest()
    uid = _sop_instance_uid(data)
    return CaseIdentity(f"sop:{uid}" if uid else f"sha256:{sha256}", sha256, uid)


def _sop_instance_uid(data: bytes) -> str | None:
    """The SOP Instance UID of DICOM content, read as raw text (no value validation)."""
    preamble = data[128:132] == b"DICM"
    if not preamble and (data.startswith(PNG_SIGNATURE) or data.startswith(JPEG_SIGNATURE)):
        return None
    if not preamble and not (
        len(data) >= 8
        and (int.from_bytes(data[:2], "little") in _RAW_DICOM_FIRST_GROUPS
             or int.from_bytes(data[:2], "big") in _RAW_DICOM_FIRST_GROUPS)
    ):
        return None
    try:
        dataset = pydicom.dcmread(
            io.BytesIO(data), stop_before_pixels=True, force=not preamble,
            specific_tags=[_SOP_INSTANCE_UID_TAG],
        )
        element = dataset.get_item(_SOP_INSTANCE_UID_TAG)
    except DECODE_ERRORS:
        return None
    if element is None or element.value is None:
        return None
    raw = element.value
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
    text = text.strip("\x00 \t\r\n")
    return text if 0 < len(text) <= 64 else None


def parse_label_value(text: str) -> int | None:
    """-1/0/1 from a cell (``1.0`` style accepted); None for a blank cell.

    Raises
    ------
    ValueError
        The cell holds anything else.
    """
    cell = text.strip()
    if not cell:
        return None
    if cell not in LABEL_VALUES:
        raise ValueError(cell)
    return LABEL_VALUES[cell]


def load_manifest(data_path: Path, reports_csv: Path | None = None) -> Manifest:
    """Read a CSV manifest or scan a folder of images (see the module docstring).

    Raises
    ------
    MedVisionError
        FILE_NOT_FOUND when ``data_path`` (or ``reports_csv``) does not exist,
        INVALID_ARGUMENT for an unreadable CSV, a missing key column or a CSV given
        both as ``data_path`` and ``reports_csv``.
    """
    if not data_path.exists():
        raise MedVisionError(
            ErrorCode.FILE_NOT_FOUND, f"'{data_path.name}' does not exist.", file=data_path.name
        )
    if data_path.is_dir():
        return _folder_manifest(data_path, reports_csv)
    if reports_csv is not None:
        raise MedVisionError(
            ErrorCode.INVALID_ARGUMENT,
            "reports_csv is only used with a folder of images; a CSV data_path already "
            "carries the reports.",
        )
    return _csv_manifest(data_path)


# --------------------------------------------------------------------------- CSV reading


@dataclass
class _Table:
    columns: dict[str, str]  # lower-case name -> header as written
    rows: list[dict[str, str]]
    raw: bytes
    numbers: list[int] = field(default_factory=list)  # each row's number in the file (the header is 1)


def _read_table(path: Path) -> _Table:
    """Read a CSV into rows keyed by the headers as written (stripped)."""
    if not path.is_file():
        raise MedVisionError(ErrorCode.FILE_NOT_FOUND, f"'{path.name}' does not exist.", file=path.name)
    try:
        if path.stat().st_size > MAX_CSV_BYTES:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"'{path.name}' is too large for a manifest.")
        raw = path.read_bytes()
    except OSError as exc:
        raise MedVisionError(
            ErrorCode.FILE_NOT_FOUND, f"'{path.name}' cannot be read ({exc.strerror}).", file=path.name
        ) from exc
    try:
        text = raw.decode("utf-8-sig")
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if not header:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"'{path.name}' is empty: a header row is needed.")
        names = [name.strip() for name in header]
        lowered = [name.lower() for name in names]
        if any(not name for name in names) or len(set(lowered)) != len(lowered):
            raise MedVisionError(
                ErrorCode.INVALID_ARGUMENT, f"'{path.name}' has blank or duplicate column names."
            )
        rows, numbers = [], []
        for line_number, values in enumerate(reader, start=2):
            if not any(value.strip() for value in values):
                continue
            if len(values) > len(names):
                raise MedVisionError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"'{path.name}' line {line_number} has more cells than the header.",
                )
            values = values + [""] * (len(names) - len(values))
            rows.append(dict(zip(names, values, strict=True)))
            numbers.append(line_number)
    except UnicodeDecodeError as exc:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"'{path.name}' is not UTF-8 text.") from exc
    except csv.Error as exc:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"'{path.name}' is not a valid CSV ({exc}).") from exc
    return _Table(dict(zip(lowered, names, strict=True)), rows, raw, numbers)


def _label_columns(table: _Table) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split the non-reserved columns into label columns and ignored ones."""
    labels, ignored = [], []
    for lowered, name in table.columns.items():
        if lowered in RESERVED_COLUMNS:
            continue
        try:
            for row in table.rows:
                parse_label_value(row[name])
        except ValueError:
            ignored.append(name)
        else:
            labels.append(name)
    return tuple(labels), tuple(ignored)


def _annotation(table: _Table, row: dict[str, str], label_columns: tuple[str, ...], where: str) -> Annotation:
    """The report sections, diagnoses and labels of one row."""
    report: dict[str, str] = {}
    for lowered, section in REPORT_COLUMNS.items():
        name = table.columns.get(lowered)
        if name and row[name].strip() and section not in report:
            report[section] = row[name].strip()
    diagnoses: list[str] = []
    for lowered in DIAGNOSES_COLUMNS:
        name = table.columns.get(lowered)
        if name:
            for item in row[name].split(DIAGNOSIS_SEPARATOR):
                if item.strip() and item.strip() not in diagnoses:
                    diagnoses.append(item.strip())
    labels = {}
    for name in label_columns:
        value = parse_label_value(row[name])
        if value is not None:
            labels[name] = value
    case_id = None
    if CASE_ID_COLUMN in table.columns:
        case_id = row[table.columns[CASE_ID_COLUMN]].strip() or None
        if case_id is not None and not CASE_ID_PATTERN.match(case_id):
            raise MedVisionError(
                ErrorCode.INVALID_ARGUMENT,
                f"{where}: case_id must be 1-64 letters, digits or ._:- (starting with a letter or digit).",
            )
    return Annotation(case_id, report, tuple(diagnoses), labels)


def _display_name(written: str) -> str:
    """How a manifest path is shown: as written when relative, the base name when absolute."""
    return Path(written).name if Path(written).is_absolute() else Path(written).as_posix()


def _fingerprint(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        chunk = part.encode() if isinstance(part, str) else part
        digest.update(len(chunk).to_bytes(8, "big"))
        digest.update(chunk)
    return digest.hexdigest()


def _csv_manifest(csv_path: Path) -> Manifest:
    table = _read_table(csv_path)
    if IMAGE_PATH_COLUMN not in table.columns:
        raise MedVisionError(
            ErrorCode.INVALID_ARGUMENT,
            f"'{csv_path.name}' needs an '{IMAGE_PATH_COLUMN}' column (paths relative to the CSV).",
        )
    label_columns, ignored = _label_columns(table)
    root = csv_path.resolve().parent
    entries = []
    for line_number, row in zip(table.numbers, table.rows, strict=True):
        # A CSV written on Windows may use backslashes; both work everywhere.
        written = row[table.columns[IMAGE_PATH_COLUMN]].strip().replace("\\", "/")
        where = f"'{csv_path.name}' row {line_number}"
        if not written:
            error = MedVisionError(ErrorCode.INVALID_ARGUMENT, f"{where}: image_path is empty.")
            entries.append(ManifestEntry(f"{csv_path.name}:{line_number}", csv_path, InvalidAnnotation(error=error),
                                         line_number))
            continue
        entries.append(
            ManifestEntry(_display_name(written), root / written,
                          _annotation_or_error(table, row, label_columns, where), line_number)
        )
    return Manifest(
        kind="csv",
        entries=entries,
        fingerprint=_fingerprint("csv", str(csv_path.resolve()), table.raw),
        data_name=csv_path.name,
        label_columns=label_columns,
        ignored_columns=ignored,
    )


def _annotation_or_error(
    table: _Table, row: dict[str, str], label_columns: tuple[str, ...], where: str
) -> Annotation:
    """A row's annotation; a bad case_id makes an annotation the build reports as failed."""
    try:
        return _annotation(table, row, label_columns, where)
    except MedVisionError as err:
        return InvalidAnnotation(error=err)


# --------------------------------------------------------------------------- folder scan


def _image_files(folder: Path) -> Iterator[Path]:
    """Candidate image files under ``folder``, sorted, hidden files and CSVs skipped."""
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file() and path.suffix.lower() != ".csv":
            yield path


def _folder_manifest(folder: Path, reports_csv: Path | None) -> Manifest:
    folder = folder.resolve()
    files = list(_image_files(folder))
    relative_names = [path.relative_to(folder).as_posix() for path in files]
    manifest = Manifest(
        kind="folder",
        entries=[],
        fingerprint="",
        data_name=folder.name,
    )
    by_file: dict[str, Annotation] = {}
    table_raw = b""
    if reports_csv is not None:
        table = _read_table(Path(reports_csv))
        table_raw = table.raw
        key_column = next((table.columns[c] for c in FILE_NAME_COLUMNS if c in table.columns), None)
        sop_column = table.columns.get(SOP_UID_COLUMN)
        if key_column is None and sop_column is None:
            raise MedVisionError(
                ErrorCode.INVALID_ARGUMENT,
                f"'{Path(reports_csv).name}' needs a 'file_name' or 'sop_instance_uid' column "
                "to match its rows to the images.",
            )
        label_columns, ignored = _label_columns(table)
        manifest.label_columns, manifest.ignored_columns = label_columns, ignored
        base_names: dict[str, list[str]] = {}
        for name in relative_names:
            base_names.setdefault(Path(name).name, []).append(name)
        for line_number, row in zip(table.numbers, table.rows, strict=True):
            where = f"'{Path(reports_csv).name}' row {line_number}"
            annotation = _annotation_or_error(table, row, label_columns, where)
            manifest._row_count += 1
            file_key = row[key_column].strip().replace("\\", "/") if key_column else ""
            sop_key = row[sop_column].strip() if sop_column else ""
            if file_key:
                matches = [file_key] if file_key in relative_names else base_names.get(file_key, [])
                if len(matches) == 1:
                    by_file[matches[0]] = annotation
            elif sop_key:
                manifest.by_sop_instance_uid[sop_key] = annotation
    for path, name in zip(files, relative_names, strict=True):
        annotation = by_file.get(name)
        manifest.entries.append(ManifestEntry(name, path, annotation))
    manifest._used_rows.update(id(a) for a in by_file.values())
    manifest.fingerprint = _fingerprint("folder", str(folder), "\n".join(relative_names), table_raw)
    return manifest
