"""mTLS on the gateway -> worker hop: per-process identities, no private key ever leaves its process.

When workers run on other hosts (``--ray``, always) or when ``--internal-tls`` is given locally,
the gateway and every worker each generate an ephemeral EC P-256 key and a self-signed
certificate at start-up (``cryptography``). Only certificates travel: the gateway's goes to the
worker in its config (the worker then accepts only clients presenting it: client auth), the
worker's comes back with its address (the gateway pins it as the only root for that channel).
Both certificates name a fixed SAN (``terrazzo-worker`` / ``terrazzo-gateway``), so the hop
does not depend on which IP a worker binds; ``grpc.ssl_target_name_override`` selects it.
With mTLS the worker token is not sent at all (the client certificate is the credential), so no
secret crosses the network in plaintext, not even inside Ray's own actor-creation messages.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import grpc

WORKER_NAME = "terrazzo-worker"
GATEWAY_NAME = "terrazzo-gateway"


@dataclass(frozen=True, slots=True)
class Identity:
    """A PEM certificate and its private key (the key stays in the process that made it)."""

    cert_pem: bytes
    key_pem: bytes = b""


def make_identity(name: str, days: int = 30) -> Identity:
    """An ephemeral EC P-256 key and a self-signed certificate with ``name`` as CN and DNS SAN."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Identity(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def worker_server_credentials(worker: Identity, gateway_cert_pem: bytes) -> grpc.ServerCredentials:
    """A worker's TLS port: its own identity; clients must present the gateway's certificate."""
    return grpc.ssl_server_credentials(
        [(worker.key_pem, worker.cert_pem)],
        root_certificates=gateway_cert_pem,
        require_client_auth=True,
    )


def gateway_channel(
    address: str, gateway: Identity, worker_cert_pem: bytes, options: list[tuple[str, object]]
) -> grpc.Channel:
    """The gateway's channel to one worker: trusts only that worker's pinned certificate."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=worker_cert_pem,
        private_key=gateway.key_pem,
        certificate_chain=gateway.cert_pem,
    )
    return grpc.secure_channel(
        address, creds, options=[*options, ("grpc.ssl_target_name_override", WORKER_NAME)]
    )
