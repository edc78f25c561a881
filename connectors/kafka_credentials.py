"""The credentials of a secure local broker (`gemeentebus kafka up --secure`).

A private certificate authority, one broker certificate signed by it (names `localhost` and
`127.0.0.1`, for serving TLS and for the brokers' own mTLS on the controller listener) and
a random password per SCRAM user (`admin`, `broker`, and the `users` asked for: the bus's
roles, test principals), made once with the `cryptography` package and kept in the
broker's state folder: the folder is 0700, keys and passwords 0600. Only the CA
certificate is for clients to have (`kafka.ssl_cafile`).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from streams.exceptions import ConfigurationError

__all__ = ["ADMIN", "BROKER_CN", "BROKER_USER", "USERS", "LocalCredentials", "scram_user"]

ADMIN: Final = "admin"  # the clients' super user (operator, and the bus until roles exist)
BROKER_USER: Final = "broker"  # the brokers among themselves, over SASL_SSL
USERS: Final = (ADMIN, BROKER_USER)
BROKER_CN: Final = "gemeentebus-local-broker"  # the brokers' principal on the controller port

_CLIENT_AUTH: Final = ExtendedKeyUsageOID.CLIENT_AUTH
# What StorageTool's `--add-scram 'SCRAM-SHA-512=[name=...,password=...]'` parses safely.
_USER_NAME: Final = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_HOST_NAME: Final = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


def scram_user(principal: str) -> str:
    """The SCRAM user name of a principal `User:<name>` (what the broker calls it)."""
    name = principal.removeprefix("User:")
    if name == principal or not _USER_NAME.match(name):
        raise ConfigurationError(
            f"{principal} is no SCRAM user of the local broker (User:<letters, digits, . _ ->)"
        )
    return name


_CA_DAYS: Final = 3650
_LEAF_DAYS: Final = 825


def _write_private(path: Path, data: bytes) -> None:
    """Create `path` readable by its owner alone (never widened by the umask, never reused)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted PKCS#8: what Kafka's inline PEM keystore (ssl.keystore.key) reads.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _make_ca(now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gemeentebus local CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
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
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_broker(
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    now: datetime.datetime,
    hosts: tuple[str, ...] = (),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in ("localhost", *hosts)]
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, BROKER_CN)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_LEAF_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            # serving TLS, and presenting itself to the controllers (mTLS)
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


@dataclass(frozen=True, slots=True)
class LocalCredentials:
    """The CA, the broker certificate and the SCRAM passwords in `folder`, for `admin`,
    `broker` and each of `users`. The certificate names `localhost`, `127.0.0.1` and the
    `hosts` (such as a compose service's name)."""

    folder: Path
    users: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for user in self.users:
            if not _USER_NAME.match(user):
                raise ConfigurationError(f"Kafka user name {user!r}: letters, digits, . _ - only")
        for host in self.hosts:
            if not _HOST_NAME.match(host):
                raise ConfigurationError(f"broker host name {host!r}: a DNS name")

    @property
    def all_users(self) -> tuple[str, ...]:
        """Every SCRAM user of the broker, `admin` and `broker` first."""
        return (*USERS, *(u for u in dict.fromkeys(self.users) if u not in USERS))

    @property
    def ca_file(self) -> Path:
        """The CA certificate: what clients trust (`kafka.ssl_cafile`)."""
        return self.folder / "ca.crt"

    @property
    def _ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def broker_chain(self) -> Path:
        """The broker certificate followed by the CA certificate (PEM)."""
        return self.folder / "broker.crt"

    @property
    def broker_key(self) -> Path:
        return self.folder / "broker.key"

    def password_file(self, user: str) -> Path:
        """The file holding `user`'s password on its first line (`kafka.sasl_password_file`)."""
        return self.folder / f"{user}.password"

    def password(self, user: str) -> str:
        try:
            return self.password_file(user).read_text().splitlines()[0]
        except (OSError, IndexError) as exc:
            raise ConfigurationError(
                f"the password of Kafka user {user} is missing from {self.folder}"
            ) from exc

    @property
    def complete(self) -> bool:
        """The CA, the broker certificate and the passwords of `admin` and `broker` are made."""
        files = [self.ca_file, self._ca_key, self.broker_chain, self.broker_key]
        return all(p.is_file() for p in [*files, *(self.password_file(u) for u in USERS)])

    def _new_password(self, user: str) -> None:
        _write_private(self.password_file(user), (secrets.token_urlsafe(24) + "\n").encode())

    def missing_users(self) -> list[str]:
        """The users of `all_users` without a password yet."""
        return [u for u in self.all_users if not self.password_file(u).is_file()]

    def ensure(self) -> list[str]:
        """Make the CA, the broker certificate and the passwords, unless already made; return
        the users given a password now."""
        if self.complete:
            made = self.missing_users()
            for user in made:
                self._new_password(user)
            return made
        if self.folder.exists() and any(self.folder.iterdir()):
            raise ConfigurationError(
                f"the credentials in {self.folder} are incomplete: remove the secure broker's "
                "state folder to start it anew (its data goes with it)"
            )
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        now = datetime.datetime.now(datetime.UTC)
        ca_key, ca = _make_ca(now)
        broker_key, broker = _make_broker(ca_key, ca, now, self.hosts)
        _write_private(self._ca_key, _pem_key(ca_key))
        _write_private(self.broker_key, _pem_key(broker_key))
        self.broker_chain.write_bytes(_pem_cert(broker) + _pem_cert(ca))
        for user in self.all_users:
            self._new_password(user)
        self.ca_file.write_bytes(_pem_cert(ca))
        return list(self.all_users)
