"""Certificates, keys and kubeconfigs of the local cluster.

One self-signed CA signs everything: the serving certificate shared by the apiserver,
controller-manager and scheduler (all on 127.0.0.1), and one client certificate per
identity. Identities follow Kubernetes' conventions so that RBAC and the Node authorizer
see what they would in a real cluster:

- admin:              CN=devstack-admin, O=system:masters
- controller-manager: CN=system:kube-controller-manager
- scheduler:          CN=system:kube-scheduler
- kubelet:            CN=system:node:<node>, O=system:nodes

The service-account key pair signs (apiserver) and verifies tokens (controller-manager
uses the private key for legacy token Secrets).

Everything is generated once and kept, so kubeconfigs handed out stay valid across
``down``/``up``; ``reset`` deletes them.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devstack import versions

CLUSTER_NAME = "devstack"
# Certificates live long enough for any dev machine, short enough to be renewed by `reset`.
VALIDITY = dt.timedelta(days=365)
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

_Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class Identity:
    """A client certificate's subject and the file stem it is stored under."""

    stem: str
    common_name: str
    organizations: tuple[str, ...] = ()


ADMIN = Identity("admin", "devstack-admin", ("system:masters",))
CONTROLLER_MANAGER = Identity("controller-manager", "system:kube-controller-manager")
SCHEDULER = Identity("scheduler", "system:kube-scheduler")


def kubelet_identity(node: str = versions.NODE_NAME) -> Identity:
    return Identity("kubelet", f"system:node:{node}", ("system:nodes",))


@dataclass(frozen=True)
class Pki:
    """Paths of the generated material under ``root`` (``.devstack/pki``)."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.root / "serving.crt"

    @property
    def serving_key(self) -> Path:
        return self.root / "serving.key"

    @property
    def sa_key(self) -> Path:
        return self.root / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.root / "sa.pub"

    def client_cert(self, ident: Identity) -> Path:
        return self.root / f"{ident.stem}.crt"

    def client_key(self, ident: Identity) -> Path:
        return self.root / f"{ident.stem}.key"


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: fast to generate (RSA-2048 takes ~0.1 s each) and accepted everywhere here.
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: _Key) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: object) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + VALIDITY)
    )


def _load_ca(pki: Pki) -> tuple[x509.Certificate, _Key]:
    cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    return cert, key


def _issue(
    pki: Pki,
    cert_path: Path,
    key_path: Path,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
) -> None:
    ca_cert, ca_key = _load_ca(pki)
    key = _new_key()
    builder = (
        _builder(subject, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    _write_key(key_path, key)
    _write_cert(cert_path, builder.sign(ca_key, hashes.SHA256()))


def _ca_valid(pki: Pki) -> bool:
    if not (pki.ca_cert.exists() and pki.ca_key.exists()):
        return False
    cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    return cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=1)


def ensure_pki(root: Path, node: str = versions.NODE_NAME) -> Pki:
    """Create whatever is missing under ``root``; a new CA re-issues every certificate."""
    pki = Pki(root)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    fresh_ca = not _ca_valid(pki)
    if fresh_ca:
        key = _new_key()
        subject = _name("devstack-ca")
        cert = (
            _builder(subject, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=False,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        _write_key(pki.ca_key, key)
        _write_cert(pki.ca_cert, cert)

    if fresh_ca or not pki.serving_cert.exists():
        dns = [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        # .1 of the service range: the `kubernetes` Service's ClusterIP.
        service_ip = ipaddress.IPv4Network(versions.SERVICE_CLUSTER_IP_RANGE)[1]
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(service_ip)]
        _issue(
            pki,
            pki.serving_cert,
            pki.serving_key,
            _name("kube-apiserver"),
            ExtendedKeyUsageOID.SERVER_AUTH,
            sans,
        )

    for ident in (ADMIN, CONTROLLER_MANAGER, SCHEDULER, kubelet_identity(node)):
        if fresh_ca or not pki.client_cert(ident).exists():
            _issue(
                pki,
                pki.client_cert(ident),
                pki.client_key(ident),
                _name(ident.common_name, ident.organizations),
                ExtendedKeyUsageOID.CLIENT_AUTH,
            )

    if not (pki.sa_key.exists() and pki.sa_pub.exists()):
        # RSA: service-account tokens are RS256 by convention and every verifier
        # (client libraries, OIDC discovery consumers) accepts it.
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_key(pki.sa_key, sa)
        pki.sa_pub.write_bytes(
            sa.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    return pki


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(pki: Pki, ident: Identity, path: Path, server: str) -> Path:
    """A self-contained kubeconfig (certificates embedded) for ``ident``."""
    user = ident.common_name
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {"server": server, "certificate-authority-data": _b64(pki.ca_cert)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(pki.client_cert(ident)),
                    "client-key-data": _b64(pki.client_key(ident)),
                },
            }
        ],
        "contexts": [{"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": user}}],
        "current-context": CLUSTER_NAME,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(path)  # readers never see a half-written file
    return path
