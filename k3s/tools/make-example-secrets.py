"""Write throwaway secret files for k3s/secrets/ into a folder.

Used by scripts/k8s-check.sh so that the manifests render in CI; also handy for a
test cluster. Never for production: the certificates are self-signed, made here, and
nothing keeps the passwords. Needs `cryptography` (in .venv-k8s).

    python k3s/tools/make-example-secrets.py DIR [--nodes edge-1,edge-2] [--host fleet.example.com]
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import ipaddress
import os
import secrets
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

BROKER_NAMES = [
    "edgefleet-broker",
    "edgefleet-broker.edgefleet",
    "edgefleet-broker.edgefleet.svc",
    "edgefleet-broker.edgefleet.svc.cluster.local",
    "localhost",
]


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(subject: str, issuer_name: x509.Name | None, issuer_key, public_key, *, ca: bool,
          names: list[str] = ()) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name or name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365 if ca else 90))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    else:
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        builder = (
            builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
    return builder.sign(issuer_key, hashes.SHA256())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--nodes", default="edge-node-1,edge-node-2",
                        help="comma-separated edge node names (one broker login each)")
    parser.add_argument("--host", default="fleet.example.com", help="the API's public host name")
    args = parser.parse_args(argv)
    out: Path = args.dir
    out.mkdir(parents=True, exist_ok=True)

    def write(name: str, data: bytes | str, mode: int = 0o600) -> None:
        path = out / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        os.chmod(path, mode)

    def password() -> str:
        return secrets.token_urlsafe(24)

    write("api-admin-token", secrets.token_hex(32))
    write("api-master-key", base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
    write("mqtt-api-username", "fleet-api")
    write("mqtt-api-password", password())
    nodes = [n.strip() for n in args.nodes.split(",") if n.strip()]
    write("agent-mqtt-passwords.env", "".join(f"{n}={password()}\n" for n in nodes))

    pg = password()
    write("postgres-password", pg)
    write("database-url", f"postgresql+psycopg://edgefleet:{pg}@edgefleet-postgres.edgefleet.svc:5432/edgefleet")

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("edgefleet example CA", None, ca_key, ca_key.public_key(), ca=True)
    write("broker-ca.crt", ca.public_bytes(serialization.Encoding.PEM), 0o644)
    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker = _cert("edgefleet-broker", ca.subject, ca_key, broker_key.public_key(), ca=False, names=BROKER_NAMES)
    write("broker-tls.crt", broker.public_bytes(serialization.Encoding.PEM), 0o644)
    write("broker-tls.key", _pem_key(broker_key))
    api_key = ec.generate_private_key(ec.SECP256R1())
    api = _cert(args.host, ca.subject, ca_key, api_key.public_key(), ca=False, names=[args.host])
    write("api-tls.crt", api.public_bytes(serialization.Encoding.PEM), 0o644)
    write("api-tls.key", _pem_key(api_key))

    signing = ed25519.Ed25519PrivateKey.generate()
    write("trusted-keys.pem", signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    return 0


if __name__ == "__main__":
    sys.exit(main())
