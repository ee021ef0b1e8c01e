"""Credentials for a Flower deployment, in the files and formats Flower 1.41 reads.

A CA made for the run, its SuperLink's TLS certificate, and one authentication key pair
per SuperNode:

- `ca.crt`, `server.pem`, `server.key`: PEM; the SuperLink serves `server.pem` (valid for
  the addresses it is reached at) and SuperNodes and `flwr` trust `ca.crt`.
- `supernode_<i>` / `supernode_<i>.pub`: an ECDSA P-384 key in OpenSSH format, as
  `ssh-keygen -t ecdsa -b 384` writes it; `flwr supernode register` takes the public key,
  `flower-supernode --auth-supernode-private-key` the private one.
"""

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedavg_mnist.errors import UserError

CA_CERT, SERVER_CERT, SERVER_KEY = "ca.crt", "server.pem", "server.key"
VALIDITY = dt.timedelta(days=7)
_PEM = serialization.Encoding.PEM


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_tls_certificates(directory: Path, hosts: list[str]) -> None:
    """Write a new CA and a SuperLink certificate it signed, valid for `hosts`, to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedavg-mnist deployment CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )  # certificate and CRL signing only
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    names = [_san(host) for host in dict.fromkeys([*hosts, "localhost", "127.0.0.1", "::1"])]
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / CA_CERT).write_bytes(ca_cert.public_bytes(_PEM))
    (directory / SERVER_CERT).write_bytes(server_cert.public_bytes(_PEM))
    _write_private(directory / SERVER_KEY, _pem_key(server_key))


def check_tls_certificates(directory: Path) -> None:
    """Fail in one line unless `directory` holds the user's CA, certificate and key."""
    missing = [
        name for name in (CA_CERT, SERVER_CERT, SERVER_KEY) if not (directory / name).is_file()
    ]
    if missing:
        raise UserError(f"certificates: {directory} lacks {', '.join(missing)}")


def make_supernode_key(directory: Path, name: str) -> tuple[Path, Path]:
    """Write one SuperNode's authentication key pair; return (private, public) paths."""
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = directory / name, directory / f"{name}.pub"
    openssh = serialization.Encoding.OpenSSH
    _write_private(
        private,
        key.private_bytes(_PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()),
    )
    public.write_bytes(
        key.public_key().public_bytes(openssh, serialization.PublicFormat.OpenSSH)
        + f" {name}\n".encode()
    )
    return private, public
