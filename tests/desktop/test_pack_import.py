"""Model pack import from the window: signed and atomic (engine.inference.packtransfer), or refused.

The window runs over its own copy of a cut-down dev pack ("site-v1", the int8 classifier),
because a successful import replaces the configured pack in place, as
``medvision models import-pack`` does. The pack offered for import ("site-v2") holds the
fp32 classifier instead, so the model an analysis cites tells which pack serves it.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

import desktop.errors as errors
from desktop.qt import QMessageBox
from engine.inference import packtransfer
from engine.inference.modelpack import sha256_file
from engine.inference.packtransfer import TRUSTED_KEYS_ENV, export_pack, generate_keypair
from tests.desktop.conftest import idle, open_image


def _cut_pack(model_pack: Path, root: Path, name: str, precision: str) -> Path:
    """The dev pack's classifier of one precision, as a pack of its own named ``name``."""
    manifest = json.loads((model_pack / "manifest.json").read_text())
    entries = [m for m in manifest["models"] if m["task"] == "classify" and m["precision"] == precision][:1]
    assert entries, f"the dev pack has no {precision} classifier"
    entries[0]["default"] = True
    for entry in entries:
        (root / entry["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_pack / entry["file"], root / entry["file"])
    manifest["models"], manifest["name"] = entries, name
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


@pytest.fixture(scope="module")
def packs(model_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The current pack ("site-v1", int8), the new one ("site-v2", fp32) and a signing key pair."""
    base = tmp_path_factory.mktemp("desktop-packs")
    keys = generate_keypair(base / "keys" / "site.pem")
    return {
        "current": _cut_pack(model_pack, base / "v1", "site-v1", "int8"),
        "new": _cut_pack(model_pack, base / "v2", "site-v2", "fp32"),
        "private": base / "keys" / "site.pem",
        "public": Path(keys["public_key"]),
    }


@pytest.fixture(autouse=True)
def _no_site_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No trusted key from the environment or from this machine's site file; no stale dialog."""
    monkeypatch.delenv(TRUSTED_KEYS_ENV, raising=False)
    monkeypatch.setattr(packtransfer, "site_keys_path", lambda: tmp_path / "no-site" / "trusted_pack_keys")
    monkeypatch.setattr(errors, "last_error", None)


@pytest.fixture
def installed(packs: dict[str, Path], tmp_path: Path) -> Path:
    """The window's configured pack: a copy of "site-v1" that an import may replace."""
    return Path(shutil.copytree(packs["current"], tmp_path / "site" / "models" / "default"))


@pytest.fixture
def engine(home: Path, installed: Path):
    """Overrides the shared engine: this one serves ``installed``, never the shared dev pack."""
    from engine.api import Engine

    with Engine(home=home, model_pack=installed) as instance:
        yield instance


@pytest.fixture
def pack_window(window):
    """The window; an engine it reopened over a new pack is closed after it."""
    yield window
    if window.owns_engine:
        from desktop.worker import wait_idle

        window.close()
        assert wait_idle(60000)
        window.engine.close()


class _Dialogs:
    """Stands in for QFileDialog: answers the file pickers in order, never blocks."""

    answers: list[str] = []
    asked: list[str] = []

    @classmethod
    def getOpenFileName(cls, parent, title, *args, **kwargs):  # noqa: ANN001, ANN206, N802 - Qt's name
        cls.asked.append(title)
        return (cls.answers.pop(0) if cls.answers else "", "")

    @classmethod
    def getExistingDirectory(cls, parent, title, *args, **kwargs):  # noqa: ANN001, ANN206, N802
        raise AssertionError(f"the pack import asked for a folder ({title!r}), not a pack archive")


@pytest.fixture
def dialogs(monkeypatch: pytest.MonkeyPatch) -> type[_Dialogs]:
    monkeypatch.setattr(_Dialogs, "answers", [])
    monkeypatch.setattr(_Dialogs, "asked", [])
    monkeypatch.setattr("desktop.app.QFileDialog", _Dialogs)
    return _Dialogs


def _members(tar_path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(tar_path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar]


def _rewrite(out: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(out, "w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def _snapshot(pack: Path) -> dict[str, str]:
    """Every file of the pack and its sha256, plus what lies next to it (no temp leftovers)."""
    files = {str(p.relative_to(pack)): sha256_file(p) for p in sorted(pack.rglob("*")) if p.is_file()}
    return files | {"<siblings>": ",".join(sorted(p.name for p in pack.parent.iterdir()))}


def _model_id(pack: Path) -> str:
    return json.loads((pack / "manifest.json").read_text())["models"][0]["id"]


def _quick_model(qtbot, window) -> str:
    """Run the quick analysis from the window; the id of the classifier it used."""
    engine, session_id, image_id = window.engine, window.session_id, window.canvas.image_id
    before = len(engine.store.list_analyses(session_id, image_id))
    assert window.run_preset("quick") is not None
    idle(qtbot, timeout=120000)
    rows = engine.store.list_analyses(session_id, image_id)
    assert len(rows) == before + 1, "the analysis did not run"
    return rows[-1]["result"]["models"][0]["id"]


def _refused(qtbot, window, engine, installed: Path, before: dict[str, str], reason: str) -> None:
    """The import was refused with ``reason`` in the error dialog; the current pack still serves."""
    idle(qtbot)
    assert errors.last_error is not None and errors.last_error[0] == "MODEL_LOAD_ERROR", errors.last_error
    assert "model pack refused" in errors.last_error[1] and reason in errors.last_error[1], errors.last_error
    shown = [box for box in window.findChildren(QMessageBox, "errorDialog") if box.isVisible()]
    assert shown and reason in shown[-1].text() and "MODEL_LOAD_ERROR" in shown[-1].informativeText()
    for box in shown:
        box.close()
    assert _snapshot(installed) == before, "a refused import changed the installed pack"
    assert window.engine is engine and not window.owns_engine
    assert engine.model_status()["pack"]["name"] == "site-v1"
    assert window.pack_label.text().startswith("Model pack: site-v1")
    assert _quick_model(qtbot, window) == _model_id(installed), "the analysis no longer runs on the current pack"


@pytest.mark.parametrize("how", ["site key", "chosen key", "no key"])
def test_an_unsigned_pack_is_refused_and_the_current_pack_keeps_serving(
        qtbot, pack_window, engine, installed, packs, dialogs, rg1_path, tmp_path, monkeypatch, how) -> None:
    window = pack_window
    open_image(qtbot, window, rg1_path)
    assert _quick_model(qtbot, window) == _model_id(packs["current"])
    export_pack(packs["new"], tmp_path / "unsigned.tar")
    before = _snapshot(installed)
    if how == "site key":  # as `medvision models import-pack` without --trusted-key: the site's keys
        monkeypatch.setenv(TRUSTED_KEYS_ENV, str(packs["public"]))
        dialogs.answers = [str(tmp_path / "unsigned.tar")]
    elif how == "chosen key":  # no site key: the window asks for the signer's public key
        dialogs.answers = [str(tmp_path / "unsigned.tar"), str(packs["public"])]
    else:  # the key picker cancelled: still never taken unsigned
        dialogs.answers = [str(tmp_path / "unsigned.tar")]
    window.import_model_pack()
    assert len(dialogs.asked) == (1 if how == "site key" else 2), dialogs.asked
    _refused(qtbot, window, engine, installed, before,
             "no trusted pack key is configured" if how == "no key" else "it is unsigned")


@pytest.mark.parametrize("tamper", ["model byte", "manifest"])
def test_a_tampered_signed_pack_is_refused_and_the_current_pack_keeps_serving(
        qtbot, pack_window, engine, installed, packs, rg1_path, tmp_path, tamper) -> None:
    window = pack_window
    open_image(qtbot, window, rg1_path)
    export_pack(packs["new"], tmp_path / "signed.tar", signing_key=packs["private"])
    members = _members(tmp_path / "signed.tar")
    if tamper == "model byte":
        index = next(i for i, (m, _) in enumerate(members) if m.name.endswith(".onnx"))
        info, data = members[index]
        members[index] = (info, data[:4096] + bytes([data[4096] ^ 0xFF]) + data[4097:])
        reason = f"{info.name} does not match its sha256"
    else:  # the manifest edited after signing: it no longer matches the signed SHA256SUMS
        index = next(i for i, (m, _) in enumerate(members) if m.name == "manifest.json")
        info, data = members[index]
        manifest = json.loads(data)
        manifest["models"][0]["trained"] = True  # e.g. to hide the untrained-models banner
        members[index] = (info, json.dumps(manifest, indent=2).encode())
        reason = "manifest.json does not match its sha256"
    tampered = _rewrite(tmp_path / "tampered.tar", members)
    before = _snapshot(installed)
    window.import_pack(tampered, [packs["public"]])
    _refused(qtbot, window, engine, installed, before, reason)


def test_a_signed_pack_with_the_trusted_key_is_imported_and_used(
        qtbot, pack_window, engine, installed, packs, dialogs, rg1_path, tmp_path) -> None:
    window = pack_window
    open_image(qtbot, window, rg1_path)
    assert _quick_model(qtbot, window) == _model_id(packs["current"])
    exported = export_pack(packs["new"], tmp_path / "site-v2.tar", signing_key=packs["private"])
    dialogs.answers = [str(tmp_path / "site-v2.tar"), str(packs["public"])]
    window.import_model_pack()
    idle(qtbot, timeout=120000)
    assert errors.last_error is None, errors.last_error
    message = window.statusBar().currentMessage()
    assert "site-v2 imported" in message and exported["key_id"] in message, message
    # Installed where `medvision models import-pack` puts it: the configured pack, atomically.
    assert json.loads((installed / "manifest.json").read_text())["name"] == "site-v2"
    assert sorted(p.name for p in installed.parent.iterdir()) == ["default"]
    assert {str(p.relative_to(installed)): sha256_file(p) for p in installed.rglob("*") if p.is_file()} == {
        str(p.relative_to(packs["new"])): sha256_file(p) for p in packs["new"].rglob("*") if p.is_file()}
    # ... and in use: the window's engine serves the new pack.
    assert window.engine is not engine and window.owns_engine
    assert window.engine.settings.model_pack == installed
    assert window.engine.model_status()["pack"]["name"] == "site-v2"
    qtbot.waitUntil(lambda: window.pack_label.text().startswith("Model pack: site-v2"), timeout=10000)
    assert _quick_model(qtbot, window) == _model_id(packs["new"]) != _model_id(packs["current"])
