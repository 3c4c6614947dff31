"""DICOM TLS to a real Orthanc (its DicomTls* settings): echo and C-GET over TLS 1.2+, the
archive's certificate checked against the CA file of the archive's settings."""

from __future__ import annotations

import datetime
from dataclasses import replace
from pathlib import Path

import pytest

from dicom_node.pacs.config import load
from dicom_node.pacs.connection import echo
from dicom_node.pacs.retrieve import Retriever
from engine.errors import MedVisionError
from tests.pacs.conftest import CLIENT_AE, CLIENT_PORT, orthanc_sops, stored_sops, study_bytes
from tests.pacs.orthanc import Orthanc


def self_signed(folder: Path, host: str) -> tuple[Path, Path]:
    """A self-signed server certificate for ``host`` (its own CA), and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "pacs.pem", folder / "pacs.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_echo_and_c_get_over_tls_from_a_configured_archive(tmp_path, ingestor, engine) -> None:
    cert, key = self_signed(tmp_path, "localhost")
    server = Orthanc(tmp_path / "orthanc-tls",
                     modalities={"medvision": {"AET": CLIENT_AE, "Host": "127.0.0.1", "Port": CLIENT_PORT}},
                     DicomTlsEnabled=True, DicomTlsCertificate=str(cert), DicomTlsPrivateKey=str(key),
                     DicomTlsTrustedCertificates=str(cert), DicomTlsRemoteCertificateRequired=False).start()
    try:
        study, files = study_bytes(2, patient_id="TLS-1")
        server.upload(files)
        (tmp_path / "pacs.toml").write_text(
            f'calling_ae = "{CLIENT_AE}"\nretries = 1\n[[archive]]\nname = "secure"\nae_title = "ORTHANC"\n'
            f'host = "localhost"\nport = {server.dicom_port}\nservices = ["find", "get"]\ntls = true\n'
            f'ca_file = "pacs.pem"\n')
        settings = load(tmp_path / "pacs.toml")
        archive = settings.archive("secure")
        assert archive.tls and archive.ca_file == cert.resolve() and archive.services == {"find", "get"}
        assert echo(archive, settings)["status"] == "0x0000"
        with pytest.raises(MedVisionError):  # the archive speaks TLS only: a plain association fails
            echo(replace(archive, tls=False), replace(settings, acse_timeout_s=2))
        result = Retriever(archive, settings, ingestor).get(study)
        assert result.complete and result.stored == 2
        assert stored_sops(engine, study) == orthanc_sops(server, study)
    finally:
        server.stop()
