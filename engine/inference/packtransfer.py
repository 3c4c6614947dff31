"""Model pack transfer: export a pack to one tar, import it atomically on another machine.

A pack tar holds, at its top level and in this order:

``<model files>``      at their manifest paths (e.g. ``classify/densenet.int8.onnx``)
``manifest.json``      the pack manifest (per-file sha256)
``SHA256SUMS``         ``sha256sum``-style lines for every file above, manifest included
``SHA256SUMS.sig``     optional: JSON ``{"algorithm": "ed25519", "key_id", "signature"}``,
                       the Ed25519 signature of the exact ``SHA256SUMS`` bytes

Import never trusts the tar: members are read one by one (no ``extractall``) and only
plain files with relative, ``..``-free names are accepted (links, devices, fifos and
absolute or traversing names refuse the whole pack). Files are written into a temporary
directory next to the destination, every sha256 is checked against ``SHA256SUMS`` *and*
the manifest, the manifest is schema-checked, the signature is verified against the
site's trusted keys, and only then is the directory renamed into place (the previous
pack is swapped out and removed only after the rename succeeded).

Trusted keys (Ed25519 public keys) come from the ``trusted_keys`` argument, else from
``MEDVISION_TRUSTED_PACK_KEYS`` (``os.pathsep``-separated entries, each a base64 raw
32-byte key or the path of a key file), else from the site file
``<site config dir>/medvision/trusted_pack_keys`` (``/etc/xdg/medvision/...`` on Linux,
``C:\\ProgramData\\medvision\\...`` on Windows). A key file holds base64 raw keys one per
line (``#`` comments allowed) and/or PEM ``PUBLIC KEY`` blocks. Once any trusted key is
configured, unsigned packs and packs signed by another key are refused.

``python -m engine.inference.packtransfer keygen|export|import|verify`` is a small CLI
for install scripts and for sites before ``medvision models export-pack/import-pack``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from engine.errors import ErrorCode, MedVisionError
from engine.files import fsync_dir
from engine.inference.modelpack import MANIFEST_NAME, ModelPack, sha256_file

SUMS_NAME = "SHA256SUMS"
SIG_NAME = "SHA256SUMS.sig"
TRUSTED_KEYS_ENV = "MEDVISION_TRUSTED_PACK_KEYS"
SITE_KEYS_FILE = "trusted_pack_keys"
_BLOCK = 1 << 22
_FIXED_MTIME = 1_700_000_000  # reproducible tars: same pack, same bytes


# --------------------------------------------------------------------------- keys


def _load_error(message: str, **details: Any) -> MedVisionError:
    return MedVisionError(ErrorCode.MODEL_LOAD_ERROR, message, **details)


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """A short, stable fingerprint of a public key: the first 16 hex digits of its sha256."""
    return hashlib.sha256(_raw_public(key)).hexdigest()[:16]


def public_key_b64(key: Ed25519PublicKey) -> str:
    """The base64 raw form a site puts in its trusted key list."""
    return base64.b64encode(_raw_public(key)).decode("ascii")


def generate_keypair(private_path: Path, public_path: Path | None = None) -> dict[str, str]:
    """Write a new Ed25519 signing key (PKCS8 PEM, mode 0600) and its base64 public key."""
    private_path = Path(private_path)
    public_path = Path(public_path) if public_path else private_path.with_suffix(".pub")
    if private_path.exists():
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"{private_path} exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public = key.public_key()
    public_path.write_text(public_key_b64(public) + "\n")
    return {"private_key": str(private_path), "public_key": str(public_path),
            "public_key_b64": public_key_b64(public), "key_id": key_id(public)}


def load_signing_key(source: Ed25519PrivateKey | str | os.PathLike) -> Ed25519PrivateKey:
    """An Ed25519 private key object, or the path of an unencrypted PKCS8 PEM file."""
    if isinstance(source, Ed25519PrivateKey):
        return source
    path = Path(source)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"cannot read the signing key {path.name}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"{path.name} is not an Ed25519 private key")
    return key


def _parse_public_keys(text: str, origin: str) -> list[Ed25519PublicKey]:
    keys: list[Ed25519PublicKey] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        if line.startswith("-----BEGIN"):
            block = [line]
            while i < len(lines) and not lines[i].strip().startswith("-----END"):
                block.append(lines[i].strip())
                i += 1
            if i < len(lines):
                block.append(lines[i].strip())
                i += 1
            try:
                key = serialization.load_pem_public_key("\n".join(block).encode())
            except ValueError as exc:
                raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"bad PEM key in {origin}: {exc}") from exc
            if not isinstance(key, Ed25519PublicKey):
                raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"a key in {origin} is not Ed25519")
            keys.append(key)
            continue
        keys.append(_parse_b64_key(line.split()[-1] if line.startswith("ed25519 ") else line, origin))
    return keys


def _parse_b64_key(text: str, origin: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise MedVisionError(
            ErrorCode.INVALID_ARGUMENT, f"bad trusted key in {origin}: expected base64 of 32 raw Ed25519 bytes"
        ) from exc


def site_keys_path() -> Path:
    """Where a site keeps its trusted pack keys (one per line), outside any user's profile."""
    import platformdirs

    return Path(platformdirs.site_config_dir("medvision", False)) / SITE_KEYS_FILE


def trusted_keys_from_config(env: dict[str, str] | None = None) -> list[Ed25519PublicKey]:
    """The keys configured by the site: ``MEDVISION_TRUSTED_PACK_KEYS``, else the site file."""
    env = os.environ if env is None else env
    configured = env.get(TRUSTED_KEYS_ENV, "").strip()
    if configured:
        keys: list[Ed25519PublicKey] = []
        for entry in configured.split(os.pathsep):
            entry = entry.strip()
            if not entry:
                continue
            path = Path(entry)
            if path.is_file():
                keys.extend(_parse_public_keys(path.read_text(), path.name))
            else:
                keys.append(_parse_b64_key(entry, TRUSTED_KEYS_ENV))
        return keys
    site = site_keys_path()
    if site.is_file():
        return _parse_public_keys(site.read_text(), str(site))
    return []


def _as_public_keys(keys: Iterable[Ed25519PublicKey | str | bytes | os.PathLike]) -> list[Ed25519PublicKey]:
    result: list[Ed25519PublicKey] = []
    for key in keys:
        if isinstance(key, Ed25519PublicKey):
            result.append(key)
        elif isinstance(key, bytes) and len(key) == 32:
            result.append(Ed25519PublicKey.from_public_bytes(key))
        elif isinstance(key, os.PathLike) or (isinstance(key, str) and Path(key).is_file()):
            result.extend(_parse_public_keys(Path(key).read_text(), Path(key).name))
        elif isinstance(key, str):
            result.append(_parse_b64_key(key.strip(), "trusted_keys"))
        else:
            raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"unsupported trusted key {type(key).__name__}")
    return result


# --------------------------------------------------------------------------- export


class _HashingReader:
    """Reads a file for tarfile while hashing exactly the bytes handed out."""

    def __init__(self, handle: io.BufferedReader) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:  # noqa: D102
        data = self._handle.read(size)
        self.digest.update(data)
        return data


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = _FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def export_pack(
    pack_dir: str | os.PathLike,
    out_tar: str | os.PathLike,
    signing_key: Ed25519PrivateKey | str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write ``pack_dir`` as one verified tar at ``out_tar`` (optionally Ed25519-signed).

    Every model file is hashed while it is written and must match its manifest sha256,
    so a damaged pack is never exported. The tar appears under its final name only when
    complete. Returns ``{path, name, files, bytes, sha256, signed, key_id, trained}``.
    """
    pack = ModelPack.load(Path(pack_dir))
    key = load_signing_key(signing_key) if signing_key is not None else None
    out_tar = Path(out_tar)
    out_tar.parent.mkdir(parents=True, exist_ok=True)
    names = [MANIFEST_NAME]
    for entry in pack.entries:
        rel = _safe_relpath(entry.spec["file"])
        if rel in names:
            continue
        names.insert(-1, rel)
    sums: list[tuple[str, str]] = []
    total = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_tar.name}.", suffix=".part", dir=out_tar.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp_name, "w", format=tarfile.PAX_FORMAT) as tar:
            expected = {_safe_relpath(e.spec["file"]): e.spec["sha256"] for e in pack.entries}
            for rel in names:
                path = pack.root / rel
                if not path.is_file() or path.is_symlink():
                    raise MedVisionError(ErrorCode.MODEL_INTEGRITY_ERROR,
                                         f"model file {rel} is missing from the pack", file=rel)
                size = path.stat().st_size
                with open(path, "rb") as handle:
                    reader = _HashingReader(handle)
                    tar.addfile(_tarinfo(rel, size), reader)
                digest = reader.digest.hexdigest()
                if rel in expected and digest != expected[rel]:
                    raise MedVisionError(
                        ErrorCode.MODEL_INTEGRITY_ERROR,
                        f"model file {rel} does not match its manifest sha256; refusing to export it",
                        file=rel,
                    )
                sums.append((digest, rel))
                total += size
            sums_bytes = "".join(f"{digest}  {rel}\n" for digest, rel in sums).encode()
            tar.addfile(_tarinfo(SUMS_NAME, len(sums_bytes)), io.BytesIO(sums_bytes))
            kid = None
            if key is not None:
                kid = key_id(key.public_key())
                sig = json.dumps({
                    "algorithm": "ed25519",
                    "key_id": kid,
                    "signature": base64.b64encode(key.sign(sums_bytes)).decode("ascii"),
                }, indent=1).encode() + b"\n"
                tar.addfile(_tarinfo(SIG_NAME, len(sig)), io.BytesIO(sig))
        with open(tmp_name, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_name, out_tar)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return {
        "path": str(out_tar),
        "name": pack.name,
        "files": len(sums),
        "bytes": total,
        "sha256": sha256_file(out_tar),
        "signed": key is not None,
        "key_id": kid,
        "trained": pack.trained,
    }


# --------------------------------------------------------------------------- import


def _safe_relpath(name: str) -> str:
    """``name`` as a clean relative POSIX path, or MODEL_LOAD_ERROR for anything else."""
    if not name or "\\" in name or "\x00" in name or name.startswith("/") or ":" in name.split("/")[0]:
        raise _load_error(f"model pack refused: unsafe member name {name!r}")
    parts = PurePosixPath(name).parts
    if any(part in ("..", "") for part in parts) or parts[0] == "/":
        raise _load_error(f"model pack refused: path traversal in member name {name!r}")
    clean = "/".join(p for p in parts if p != ".")
    if not clean:
        raise _load_error(f"model pack refused: unsafe member name {name!r}")
    return clean


def _parse_sums(data: bytes) -> dict[str, str]:
    sums: dict[str, str] = {}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _load_error("model pack refused: SHA256SUMS is not UTF-8") from exc
    for line in text.splitlines():
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise _load_error(f"model pack refused: malformed SHA256SUMS line {line[:80]!r}")
        name = _safe_relpath(name.lstrip("*"))
        if name in sums:
            raise _load_error(f"model pack refused: {name} listed twice in SHA256SUMS")
        sums[name] = digest
    return sums


def _verify_signature(sums_bytes: bytes, sig_bytes: bytes | None,
                      keys: list[Ed25519PublicKey]) -> str | None:
    """The key id that verified the signature, None when unsigned and no key is required."""
    if sig_bytes is None:
        if keys:
            raise _load_error("model pack refused: it is unsigned and this site requires signed packs "
                              f"({len(keys)} trusted key(s) configured)")
        return None
    try:
        sig = json.loads(sig_bytes)
        if sig.get("algorithm") != "ed25519":
            raise ValueError(f"unsupported algorithm {sig.get('algorithm')!r}")
        signature = base64.b64decode(sig["signature"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _load_error(f"model pack refused: malformed signature file ({exc})") from exc
    if not keys:
        return None
    for key in keys:
        try:
            key.verify(signature, sums_bytes)
        except InvalidSignature:
            continue
        return key_id(key)
    raise _load_error("model pack refused: its signature does not verify against any trusted key "
                      f"(signed by key id {sig.get('key_id')!r}; tampered, or signed by an untrusted key)")


def _extract_verified(tar_path: Path, tmp: Path) -> tuple[dict[str, str], bytes, bytes | None, int]:
    """Stream members into ``tmp``; returns (computed sha256 by name, SHA256SUMS, sig, bytes)."""
    computed: dict[str, str] = {}
    sums_bytes: bytes | None = None
    sig_bytes: bytes | None = None
    total = 0
    try:
        tar = tarfile.open(tar_path, "r:*")
    except (OSError, tarfile.TarError) as exc:
        raise _load_error(f"model pack refused: {tar_path.name} is not a readable tar ({exc})") from exc
    with tar:
        try:
            for member in tar:
                if member.isdir():
                    _safe_relpath(member.name)
                    continue
                if not member.isreg():
                    kind = ("symlink" if member.issym() else "hard link" if member.islnk()
                            else "device" if (member.ischr() or member.isblk()) else "fifo" if member.isfifo()
                            else "special file")
                    raise _load_error(f"model pack refused: member {member.name!r} is a {kind}; "
                                      "only regular files are allowed")
                name = _safe_relpath(member.name)
                if name in computed or (name == SUMS_NAME and sums_bytes is not None) \
                        or (name == SIG_NAME and sig_bytes is not None):
                    raise _load_error(f"model pack refused: member {name} appears twice")
                source = tar.extractfile(member)
                assert source is not None  # regular file
                if name in (SUMS_NAME, SIG_NAME):
                    if member.size > 1 << 20:
                        raise _load_error(f"model pack refused: {name} is implausibly large")
                    data = source.read()
                    if name == SUMS_NAME:
                        sums_bytes = data
                    else:
                        sig_bytes = data
                    continue
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
                with os.fdopen(fd, "wb") as out:
                    while block := source.read(_BLOCK):
                        digest.update(block)
                        out.write(block)
                    out.flush()
                    os.fsync(out.fileno())
                computed[name] = digest.hexdigest()
                total += member.size
        except (OSError, tarfile.TarError, EOFError) as exc:
            if isinstance(exc, OSError) and exc.errno == 28:
                raise MedVisionError(ErrorCode.DISK_FULL, "no space left while importing the model pack") from exc
            raise _load_error(f"model pack refused: {tar_path.name} is truncated or corrupt ({exc})") from exc
    if sums_bytes is None:
        raise _load_error(f"model pack refused: {tar_path.name} has no {SUMS_NAME}")
    return computed, sums_bytes, sig_bytes, total


def import_pack(
    tar_path: str | os.PathLike,
    dest_dir: str | os.PathLike,
    trusted_keys: Iterable[Ed25519PublicKey | str | bytes | os.PathLike] | None = None,
) -> dict[str, Any]:
    """Verify ``tar_path`` completely, then atomically make it the pack at ``dest_dir``.

    ``trusted_keys=None`` reads the site configuration (see the module doc); an explicit
    list (even empty) is used as given. With at least one trusted key, the pack must be
    signed by one of them. Any failure leaves ``dest_dir`` exactly as it was and raises
    ``MODEL_LOAD_ERROR`` naming the reason. Returns
    ``{name, dest, files, bytes, signed, key_id, trained, replaced}``.
    """
    tar_path = Path(tar_path)
    dest = Path(dest_dir).absolute()
    if not tar_path.is_file():
        raise MedVisionError(ErrorCode.FILE_NOT_FOUND, f"no model pack tar at {tar_path}")
    if dest.exists() and not dest.is_dir():
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"{dest} exists and is not a directory")
    keys = trusted_keys_from_config() if trusted_keys is None else _as_public_keys(trusted_keys)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.import-", dir=dest.parent))
    old: Path | None = None
    try:
        computed, sums_bytes, sig_bytes, total = _extract_verified(tar_path, tmp)
        signer = _verify_signature(sums_bytes, sig_bytes, keys)
        sums = _parse_sums(sums_bytes)
        for name, digest in computed.items():
            if name not in sums:
                raise _load_error(f"model pack refused: {name} is not listed in {SUMS_NAME}")
            if sums[name] != digest:
                raise _load_error(f"model pack refused: {name} does not match its sha256 (tampered or damaged)",
                                  file=name)
        missing = sorted(set(sums) - set(computed))
        if missing:
            raise _load_error(f"model pack refused: {missing[0]} is listed in {SUMS_NAME} but missing", file=missing[0])
        if MANIFEST_NAME not in computed:
            raise _load_error(f"model pack refused: it has no {MANIFEST_NAME}")
        pack = ModelPack.load(tmp)
        for entry in pack.entries:
            rel = _safe_relpath(entry.spec["file"])
            if rel not in computed:
                raise _load_error(f"model pack refused: model file {rel} is missing", file=rel)
            if computed[rel] != entry.spec["sha256"]:
                raise _load_error(f"model pack refused: model file {rel} does not match the manifest sha256",
                                  file=rel)
        os.chmod(tmp, 0o755)
        replaced = dest.exists()
        if replaced:
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            old.rmdir()
            os.replace(dest, old)
        try:
            os.replace(tmp, dest)
        except OSError:
            if old is not None:
                os.replace(old, dest)
                old = None
            raise
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return {
        "name": pack.name,
        "dest": str(dest),
        "files": len(computed),
        "bytes": total,
        "signed": sig_bytes is not None,
        "key_id": signer,
        "trained": pack.trained,
        "replaced": replaced,
    }


def import_signed_pack(
    tar_path: str | os.PathLike,
    dest_dir: str | os.PathLike,
    trusted_keys: Iterable[Ed25519PublicKey | str | bytes | os.PathLike] | None = None,
) -> dict[str, Any]:
    """:func:`import_pack` that always requires a signature by a trusted key.

    For interactive front ends (the desktop): keys as in :func:`import_pack`
    (``None``: the site configuration), but where no trusted key is known at all the
    pack is refused (``MODEL_LOAD_ERROR``) instead of being accepted unsigned, and
    ``dest_dir`` is left exactly as it was.
    """
    keys = trusted_keys_from_config() if trusted_keys is None else _as_public_keys(trusted_keys)
    if not keys:
        raise _load_error(
            "model pack refused: no trusted pack key is configured, so its signature cannot be checked "
            f"(choose the signer's public key, or configure {TRUSTED_KEYS_ENV} or {site_keys_path()})"
        )
    return import_pack(tar_path, dest_dir, trusted_keys=keys)


# --------------------------------------------------------------------------- CLI


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.inference.packtransfer",
                                     description="export, import and sign MedVision model packs")
    sub = parser.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser("keygen", help="create an Ed25519 signing key (PEM) and its public key")
    keygen.add_argument("private_key")
    keygen.add_argument("--public", help="public key file (default: PRIVATE with .pub)")
    export = sub.add_parser("export", help="write a pack directory as a tar")
    export.add_argument("pack_dir")
    export.add_argument("out_tar")
    export.add_argument("--sign", metavar="PRIVATE_KEY", help="Ed25519 private key (PEM) to sign with")
    imp = sub.add_parser("import", help="verify a pack tar and install it atomically")
    imp.add_argument("tar")
    imp.add_argument("dest_dir")
    imp.add_argument("--trusted-key", action="append", metavar="KEY",
                     help="base64 public key or key file (repeatable; default: site configuration)")
    args = parser.parse_args(argv)
    try:
        if args.command == "keygen":
            result = generate_keypair(Path(args.private_key), Path(args.public) if args.public else None)
        elif args.command == "export":
            result = export_pack(args.pack_dir, args.out_tar, signing_key=args.sign)
        else:
            result = import_pack(args.tar, args.dest_dir, trusted_keys=args.trusted_key)
    except MedVisionError as exc:
        sys.stderr.write(f"{exc.code.value}: {exc.message}\n")
        return 2
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
