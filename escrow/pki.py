"""The escrow's private PKI: a development CA, server and client certificates, and role extraction.

Role convention: a client certificate's subject carries exactly one ``OU`` naming its role —
``gateway`` (may unlock, renew, revoke leases), ``worker`` (may deposit, heartbeat, revoke its own
deposit; what it may touch is further limited by its Ed25519 binding), or ``operator`` (may revoke leases
and deposits). The ``CN`` names the client (for the audit log). Certificates must be issued by the private
CA configured on the listener; the system trust store is never consulted.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLES = ("gateway", "worker", "operator")


@dataclass(frozen=True)
class ClientIdentity:
    role: str
    name: str
    fingerprint: str  # SHA-256 of the DER certificate, hex

    @property
    def actor(self) -> str:
        return f"{self.role}:{self.name}"


def identity_from_pem(pem: str | bytes) -> ClientIdentity | None:
    """The role and name a (TLS-verified) client certificate asserts, or None if it asserts none."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
    except ValueError:
        return None
    units = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if len(units) != 1 or units[0] not in ROLES or len(names) != 1:
        return None
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()
    return ClientIdentity(role=str(units[0]), name=str(names[0])[:120], fingerprint=fingerprint)


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(cn: str, ou: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Hypertuna escrow")]
    if ou:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attributes)


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def create_ca(directory: Path, *, days: int = 3650, name: str = "Hypertuna escrow development CA") -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = _name(name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    issued = Issued(directory / "ca.pem", directory / "ca-key.pem")
    _write(issued.cert, cert.public_bytes(serialization.Encoding.PEM))
    _write(issued.key, _key_pem(key), private=True)
    return issued


def _load_ca(ca: Issued) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("The CA key must be an EC key.")
    return cert, key


def issue(
    ca: Issued,
    directory: Path,
    *,
    stem: str,
    common_name: str,
    role: str | None,
    server_names: tuple[str, ...] = (),
    days: int = 825,
    not_before: dt.datetime | None = None,
) -> Issued:
    """Issue a server certificate (``role=None`` and ``server_names``) or a role client certificate."""
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    ca_cert, ca_key = _load_ca(ca)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, role))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if server_names:
        sans: list[x509.GeneralName] = []
        for host in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    issued = Issued(directory / f"{stem}.pem", directory / f"{stem}-key.pem")
    _write(issued.cert, cert.public_bytes(serialization.Encoding.PEM))
    _write(issued.key, _key_pem(key), private=True)
    return issued
