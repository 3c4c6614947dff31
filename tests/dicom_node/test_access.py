"""Who may associate: allow list (with host check), called AE, association limit, TLS."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.dicom_node.conftest import echoscu


def test_calling_ae_off_the_allow_list_is_rejected(start_node, node_engine) -> None:
    node = start_node(allowed_callers=("MODALITY1", "PACS@127.0.0.1", "CT2@10.1.2.3"))
    assert echoscu(node.port, aet="MODALITY1").returncode == 0
    assert echoscu(node.port, aet="PACS").returncode == 0
    for caller in ("STRANGER", "CT2"):  # CT2 is allowed, but only from 10.1.2.3
        result = echoscu(node.port, aet=caller)
        assert result.returncode != 0 and "Association Rejected" in result.stderr, result.stderr
        assert "Calling AE Title Not Recognized" in result.stderr
    rows = node_engine.store.db.query("SELECT calling_ae, state, reason FROM dicom_associations ORDER BY rowid")
    assert [(r["calling_ae"], r["state"]) for r in rows] == [
        ("MODALITY1", "released"), ("PACS", "released"), ("STRANGER", "rejected"), ("CT2", "rejected")]
    assert echoscu(node.port, aet="MODALITY1").returncode == 0  # the node is still fine


def test_called_ae_is_checked_when_required(start_node) -> None:
    node = start_node(ae_title="WORKSTATION", require_called_ae=True)
    assert echoscu(node.port, called="WORKSTATION").returncode == 0
    result = echoscu(node.port, called="SOMEONE-ELSE")
    assert result.returncode != 0 and "Called AE Title Not Recognized" in result.stderr


def test_too_many_associations_are_rejected_transiently_while_others_work(start_node) -> None:
    node = start_node(max_associations=2)
    scu = AE(ae_title="HOLDER")
    scu.add_requested_context(Verification)
    held = [scu.associate("127.0.0.1", node.port) for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        result = echoscu(node.port)
        assert result.returncode != 0 and "Transient" in result.stderr and "Local Limit Exceeded" in result.stderr
        assert all(a.send_c_echo().Status == 0x0000 for a in held)  # existing ones keep working
    finally:
        for assoc in held:
            assoc.release()
    assert echoscu(node.port).returncode == 0


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_with_client_certificate(start_node, tmp_path) -> None:
    server_cert, server_key = _self_signed(tmp_path, "node")
    client_cert, client_key = _self_signed(tmp_path, "modality")
    node = start_node(tls_certificate=server_cert, tls_key=server_key, tls_client_ca=client_cert)
    with_cert = echoscu(node.port, "+tls", str(client_key), str(client_cert), "+cf", str(server_cert))
    assert with_cert.returncode == 0, with_cert.stderr
    without_cert = echoscu(node.port, "+tla", "+cf", str(server_cert))  # anonymous TLS client
    assert without_cert.returncode != 0
    plain = echoscu(node.port)  # no TLS at all: the handshake fails on its own thread
    assert plain.returncode != 0
    assert echoscu(node.port, "+tls", str(client_key), str(client_cert), "+cf", str(server_cert)).returncode == 0


def test_stalled_tls_client_does_not_block_accepts(start_node, tmp_path) -> None:
    """A peer that connects and never starts the handshake holds no one else up."""
    import socket

    server_cert, server_key = _self_signed(tmp_path, "node")
    node = start_node(tls_certificate=server_cert, tls_key=server_key)
    stalled = socket.create_connection(("127.0.0.1", node.port))
    try:
        result = subprocess.run(["echoscu", "+tla", "-ic", "-ts", "5",
                                 "127.0.0.1", str(node.port)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
    finally:
        stalled.close()
