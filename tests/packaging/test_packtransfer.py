"""Model pack transfer: real tars of real model files, tampering, signatures, traversal."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from engine.errors import ErrorCode, MedVisionError
from engine.inference.modelpack import ModelPack, sha256_file
from engine.inference.packtransfer import (
    SIG_NAME,
    SUMS_NAME,
    TRUSTED_KEYS_ENV,
    export_pack,
    generate_keypair,
    import_pack,
    public_key_b64,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_pack(model_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dev pack cut down to its two smallest real model files (fast tars)."""
    manifest = json.loads((model_pack / "manifest.json").read_text())
    entries = sorted(manifest["models"], key=lambda m: m["size_bytes"])[:2]
    root = tmp_path_factory.mktemp("small-pack")
    for entry in entries:
        (root / entry["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_pack / entry["file"], root / entry["file"])
    manifest["models"] = entries
    manifest["name"] = "small-dev"
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


@pytest.fixture(autouse=True)
def _no_site_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TRUSTED_KEYS_ENV, raising=False)


def _members(tar_path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(tar_path) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else b"") for m in tar]


def _rewrite(tar_path: Path, out: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(out, "w") as tar:
        for info, data in members:
            info = tarfile.TarInfo(info.name) if info.isreg() and info.size != len(data) else info
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return out


def _refused(tar_path: Path, dest: Path, match: str, **kwargs) -> MedVisionError:
    before = sorted(p.name for p in dest.parent.iterdir())
    with pytest.raises(MedVisionError, match=match) as info:
        import_pack(tar_path, dest, **kwargs)
    assert info.value.code == ErrorCode.MODEL_LOAD_ERROR
    # Atomic: nothing new or half-written is left next to the destination.
    assert sorted(p.name for p in dest.parent.iterdir()) == before
    return info.value


def test_export_import_round_trip_is_complete_and_reproducible(small_pack: Path, tmp_path: Path) -> None:
    first = export_pack(small_pack, tmp_path / "a.tar")
    second = export_pack(small_pack, tmp_path / "b.tar")
    assert first["sha256"] == second["sha256"]  # same pack, same bytes
    assert first["files"] == 3 and not first["signed"] and first["trained"] is False
    names = [m.name for m, _ in _members(tmp_path / "a.tar")]
    assert names[-2:] == ["manifest.json", SUMS_NAME]

    dest = tmp_path / "site" / "models" / "default"
    result = import_pack(tmp_path / "a.tar", dest, trusted_keys=[])
    assert result["name"] == "small-dev" and result["replaced"] is False and result["key_id"] is None
    pack = ModelPack.load(dest)
    assert all(row["ok"] for row in pack.verify())
    for entry in pack.entries:
        assert sha256_file(dest / entry.spec["file"]) == sha256_file(small_pack / entry.spec["file"])
    assert not (dest / SUMS_NAME).exists()  # the transfer envelope is not part of the pack
    assert sorted(p.name for p in dest.parent.iterdir()) == ["default"]


def test_import_replaces_an_existing_pack_atomically(small_pack: Path, tmp_path: Path) -> None:
    export_pack(small_pack, tmp_path / "p.tar")
    dest = tmp_path / "default"
    dest.mkdir()
    (dest / "stale.txt").write_text("old pack")
    result = import_pack(tmp_path / "p.tar", dest, trusted_keys=[])
    assert result["replaced"] is True
    assert not (dest / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default", "p.tar"]


def test_signed_pack_verifies_against_a_trusted_key(small_pack: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    keys = generate_keypair(tmp_path / "keys" / "site.pem")
    assert oct((tmp_path / "keys" / "site.pem").stat().st_mode & 0o777) == "0o600"
    exported = export_pack(small_pack, tmp_path / "p.tar", signing_key=tmp_path / "keys" / "site.pem")
    assert exported["signed"] and exported["key_id"] == keys["key_id"]
    # explicit key file
    result = import_pack(tmp_path / "p.tar", tmp_path / "one", trusted_keys=[Path(keys["public_key"])])
    assert result["signed"] and result["key_id"] == keys["key_id"]
    # site configuration through the environment (base64 key, among others)
    other = public_key_b64(Ed25519PrivateKey.generate().public_key())
    monkeypatch.setenv(TRUSTED_KEYS_ENV, os.pathsep.join([other, keys["public_key_b64"]]))
    assert import_pack(tmp_path / "p.tar", tmp_path / "two")["key_id"] == keys["key_id"]


def test_unsigned_pack_is_refused_once_a_site_trusts_a_key(small_pack: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    export_pack(small_pack, tmp_path / "p.tar")
    trusted = public_key_b64(Ed25519PrivateKey.generate().public_key())
    monkeypatch.setenv(TRUSTED_KEYS_ENV, trusted)
    _refused(tmp_path / "p.tar", tmp_path / "dest", "unsigned")


def test_pack_signed_by_an_untrusted_key_is_refused(small_pack: Path, tmp_path: Path) -> None:
    export_pack(small_pack, tmp_path / "p.tar", signing_key=Ed25519PrivateKey.generate())
    trusted = Ed25519PrivateKey.generate().public_key()
    _refused(tmp_path / "p.tar", tmp_path / "dest", "does not verify", trusted_keys=[trusted])


def test_tampered_model_file_is_refused_and_the_old_pack_stays(small_pack: Path, tmp_path: Path) -> None:
    export_pack(small_pack, tmp_path / "p.tar")
    dest = tmp_path / "default"
    import_pack(tmp_path / "p.tar", dest, trusted_keys=[])
    before = {p.name: sha256_file(p) for p in dest.rglob("*") if p.is_file()}
    members = _members(tmp_path / "p.tar")
    info, data = members[0]
    members[0] = (info, data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:])
    bad = _rewrite(tmp_path / "p.tar", tmp_path / "bad.tar", members)
    err = _refused(bad, dest, "does not match its sha256", trusted_keys=[])
    assert err.details["file"] == info.name
    assert {p.name: sha256_file(p) for p in dest.rglob("*") if p.is_file()} == before


def test_consistently_rewritten_sums_break_the_signature_or_the_manifest(small_pack: Path, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    export_pack(small_pack, tmp_path / "p.tar", signing_key=key)
    members = _members(tmp_path / "p.tar")
    info, data = members[0]
    forged = data[:-1] + bytes([data[-1] ^ 0x01])
    import hashlib

    new_digest = hashlib.sha256(forged).hexdigest()
    rewritten = []
    for m, d in [(info, forged)] + members[1:]:
        if m.name == SUMS_NAME:
            lines = [ln for ln in d.decode().splitlines() if not ln.endswith("  " + info.name)]
            d = ("\n".join([f"{new_digest}  {info.name}"] + lines) + "\n").encode()
        rewritten.append((m, d))
    signed = _rewrite(tmp_path / "p.tar", tmp_path / "signed.tar", rewritten)
    _refused(signed, tmp_path / "dest", "does not verify", trusted_keys=[key.public_key()])
    unsigned = _rewrite(tmp_path / "p.tar", tmp_path / "unsigned.tar",
                        [(m, d) for m, d in rewritten if m.name != SIG_NAME])
    _refused(unsigned, tmp_path / "dest", "manifest sha256", trusted_keys=[])


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink", "hardlink", "device", "fifo", "backslash"])
def test_unsafe_members_refuse_the_whole_pack(small_pack: Path, tmp_path: Path, kind: str) -> None:
    export_pack(small_pack, tmp_path / "p.tar")
    members = _members(tmp_path / "p.tar")
    evil = tarfile.TarInfo()
    payload = b""
    if kind == "traversal":
        evil.name, payload = "../../evil.txt", b"owned"
    elif kind == "absolute":
        evil.name, payload = str(tmp_path / "abs-evil.txt"), b"owned"
    elif kind == "symlink":
        evil.name, evil.type, evil.linkname = "classify/link", tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "hardlink":
        evil.name, evil.type, evil.linkname = "classify/hard", tarfile.LNKTYPE, "/etc/passwd"
    elif kind == "device":
        evil.name, evil.type, evil.devmajor, evil.devminor = "classify/dev", tarfile.CHRTYPE, 1, 3
    elif kind == "fifo":
        evil.name, evil.type = "classify/fifo", tarfile.FIFOTYPE
    else:
        evil.name, payload = "..\\..\\evil.txt", b"owned"
    evil.size = len(payload)
    bad = _rewrite(tmp_path / "p.tar", tmp_path / "evil.tar", [(evil, payload)] + members)
    work = tmp_path / "site" / "a" / "b"
    work.mkdir(parents=True)
    _refused(bad, work / "default", "refused", trusted_keys=[])
    assert not list(tmp_path.rglob("*evil.txt"))
    assert not (work / "default").exists()


def test_extra_unlisted_file_missing_sums_and_truncation_are_refused(small_pack: Path, tmp_path: Path) -> None:
    export_pack(small_pack, tmp_path / "p.tar")
    members = _members(tmp_path / "p.tar")
    extra = tarfile.TarInfo("classify/extra.onnx")
    extra_tar = _rewrite(tmp_path / "p.tar", tmp_path / "extra.tar", [(extra, b"x" * 10)] + members)
    _refused(extra_tar, tmp_path / "dest", "not listed", trusted_keys=[])
    no_sums = _rewrite(tmp_path / "p.tar", tmp_path / "nosums.tar", [x for x in members if x[0].name != SUMS_NAME])
    _refused(no_sums, tmp_path / "dest", "no SHA256SUMS", trusted_keys=[])
    raw = (tmp_path / "p.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(raw[: len(raw) // 2])
    _refused(tmp_path / "cut.tar", tmp_path / "dest", "truncated|corrupt|no SHA256SUMS", trusted_keys=[])


def test_export_refuses_a_damaged_pack(small_pack: Path, tmp_path: Path) -> None:
    copy = tmp_path / "pack"
    shutil.copytree(small_pack, copy)
    entry = json.loads((copy / "manifest.json").read_text())["models"][0]
    with open(copy / entry["file"], "r+b") as handle:
        handle.seek(10)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(MedVisionError, match="refusing to export") as info:
        export_pack(copy, tmp_path / "out" / "p.tar")
    assert info.value.code == ErrorCode.MODEL_INTEGRITY_ERROR
    assert list((tmp_path / "out").iterdir()) == []


def test_module_cli_keygen_export_import(small_pack: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(TRUSTED_KEYS_ENV, None)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "engine.inference.packtransfer", *args],
                              capture_output=True, text=True, env=env, timeout=120)

    keygen = cli("keygen", str(tmp_path / "k.pem"))
    assert keygen.returncode == 0, keygen.stderr
    pub = json.loads(keygen.stdout)["public_key_b64"]
    assert base64.b64decode(pub) and len(base64.b64decode(pub)) == 32
    assert cli("export", str(small_pack), str(tmp_path / "p.tar"), "--sign", str(tmp_path / "k.pem")).returncode == 0
    wrong = public_key_b64(Ed25519PrivateKey.generate().public_key())
    refused = cli("import", str(tmp_path / "p.tar"), str(tmp_path / "d"), "--trusted-key", wrong)
    assert refused.returncode == 2 and refused.stderr.startswith("MODEL_LOAD_ERROR: model pack refused")
    ok = cli("import", str(tmp_path / "p.tar"), str(tmp_path / "d"), "--trusted-key", pub)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["signed"] is True


def test_medvision_models_export_import_pack(small_pack: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from engine.cli import main

    monkeypatch.delenv(TRUSTED_KEYS_ENV, raising=False)
    assert main(["models", "keygen", str(tmp_path / "site.pem")]) == 0
    public = json.loads(capsys.readouterr().out)["public_key_b64"]
    assert main(["--pack", str(small_pack), "models", "export-pack", str(tmp_path / "p.tar"),
                 "--sign", str(tmp_path / "site.pem")]) == 0
    capsys.readouterr()
    dest = tmp_path / "installed"
    assert main(["models", "import-pack", str(tmp_path / "p.tar"), "--dest", str(dest), "--trusted-key", public]) == 0
    assert json.loads(capsys.readouterr().out)["signed"] is True
    assert ModelPack.load(dest).manifest == ModelPack.load(small_pack).manifest
    other = public_key_b64(Ed25519PrivateKey.generate().public_key())
    assert main(["models", "import-pack", str(tmp_path / "p.tar"), "--dest", str(tmp_path / "x"),
                 "--trusted-key", other]) == 2
    assert capsys.readouterr().err.startswith("MODEL_LOAD_ERROR") and not (tmp_path / "x").exists()
