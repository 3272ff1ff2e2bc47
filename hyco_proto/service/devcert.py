"""A self-signed TLS development certificate for the emulator (``localhost``, ``127.0.0.1``,
``::1``), so ``wss://`` clients can be tested on one machine.

The certificate and its key are written to a state directory (default ``~/.hyco_proto/devcert``)
and reused while valid. Node clients (hyco-ws, hyco-https) trust it with
``NODE_EXTRA_CA_CERTS=<dir>/cert.pem`` (hybrid-connections-wire §5.3); Python clients with
``ssl.create_default_context(cafile=<dir>/cert.pem)``.

Generation prefers the ``openssl`` command line and falls back to the ``cryptography`` package.
This module stays free of process and socket imports (the sans-IO layering rule): the caller
passes a ``run`` function that executes a command (``hyco_proto.cli`` uses ``subprocess``), and
builds the ``ssl.SSLContext`` from the files.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_STATE_DIR",
    "DevCert",
    "DevCertError",
    "RunCommand",
    "default_state_dir",
    "ensure_dev_cert",
    "node_hint",
    "openssl_config",
]

#: The state directory used when none is given (``hyco emulator --state-dir``).
DEFAULT_STATE_DIR = Path("~/.hyco_proto")
#: Names the development certificate is valid for.
DNS_NAMES = ("localhost",)
IP_ADDRESSES = ("127.0.0.1", "::1")
VALID_DAYS = 365
#: Regenerate when the certificate expires within this many seconds.
RENEW_BEFORE = 7 * 24 * 3600

#: Runs a command (argv) and returns its exit status; output is the runner's business.
RunCommand = Callable[[Sequence[str]], int]


class DevCertError(RuntimeError):
    """No development certificate could be made; the message says what to install."""


@dataclass(frozen=True, slots=True)
class DevCert:
    """Where the development certificate lives, and whether it was just generated."""

    cert: Path
    key: Path
    created: bool
    generator: str  # "openssl", "cryptography" or "existing"


def default_state_dir() -> Path:
    """``$HYCO_PROTO_STATE_DIR`` or ``~/.hyco_proto``."""
    env = os.environ.get("HYCO_PROTO_STATE_DIR")
    return Path(env).expanduser() if env else DEFAULT_STATE_DIR.expanduser()


def openssl_config() -> str:
    """An ``openssl req`` configuration for a self-signed server certificate with the SANs.

    A configuration file (rather than ``-addext``) works with old OpenSSL and LibreSSL too.
    ``CA:TRUE`` lets Node take the certificate as its own trust anchor
    (``NODE_EXTRA_CA_CERTS``); ``serverAuth`` and the SANs make it a valid server certificate.
    """
    alt = [f"DNS.{i + 1} = {name}" for i, name in enumerate(DNS_NAMES)]
    alt += [f"IP.{i + 1} = {ip}" for i, ip in enumerate(IP_ADDRESSES)]
    return "\n".join([
        "[req]",
        "distinguished_name = dn",
        "x509_extensions = ext",
        "prompt = no",
        "",
        "[dn]",
        "CN = localhost",
        "O = hyco_proto development certificate",
        "",
        "[ext]",
        "basicConstraints = critical, CA:TRUE",
        "keyUsage = critical, digitalSignature, keyEncipherment, keyCertSign",
        "extendedKeyUsage = serverAuth",
        "subjectKeyIdentifier = hash",
        "subjectAltName = @alt",
        "",
        "[alt]",
        *alt,
        "",
    ])


def _openssl_generate(openssl: str, directory: Path, run: RunCommand) -> tuple[Path, Path]:
    config = directory / "openssl.cnf"
    config.write_text(openssl_config(), encoding="ascii")
    cert, key = directory / "cert.pem.new", directory / "key.pem.new"
    status = run([
        openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
        "-days", str(VALID_DAYS), "-keyout", str(key), "-out", str(cert),
        "-config", str(config),
    ])
    if status != 0 or not cert.exists() or not key.exists():
        raise DevCertError(f"'{openssl} req -x509 …' failed with exit status {status}")
    return cert, key


def _cryptography_generate(directory: Path, now: float) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509  # type: ignore[import-not-found,unused-ignore]
    from cryptography.hazmat.primitives import (  # type: ignore[import-not-found,unused-ignore]
        hashes,
        serialization,
    )
    from cryptography.hazmat.primitives.asymmetric import (  # type: ignore[import-not-found,unused-ignore]
        rsa,
    )
    from cryptography.x509.oid import (  # type: ignore[import-not-found,unused-ignore]
        ExtendedKeyUsageOID,
        NameOID,
    )

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hyco_proto development certificate"),
    ])
    start = datetime.datetime.fromtimestamp(now - 60, datetime.timezone.utc)
    alt = [x509.DNSName(n) for n in DNS_NAMES]
    alt += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in IP_ADDRESSES]
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=True,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
    )
    certificate = builder.sign(key, hashes.SHA256())
    cert_path, key_path = directory / "cert.pem.new", directory / "key.pem.new"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return cert_path, key_path


def _cryptography_available() -> bool:
    try:
        import cryptography  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def ensure_dev_cert(
    state_dir: Path | None = None,
    *,
    run: RunCommand | None,
    now: float,
    openssl: str | None = "openssl",
    force: bool = False,
) -> DevCert:
    """Return the development certificate in ``state_dir/devcert``, generating it if missing or
    about to expire (checked with ``openssl x509 -checkend`` when openssl is available).

    ``run`` executes ``openssl`` (None: do not use openssl); ``openssl`` names the command
    (None: skip it and use the ``cryptography`` package). ``now`` is the wall-clock time in
    epoch seconds (for the ``cryptography`` path's validity period). Raises
    :class:`DevCertError` when neither is usable, saying what to install.
    """
    directory = (state_dir if state_dir is not None else default_state_dir()).expanduser()
    directory = directory / "devcert"
    cert, key = directory / "cert.pem", directory / "key.pem"
    found = shutil.which(openssl) if (openssl and run is not None) else None

    if not force and cert.exists() and key.exists():
        if found is None or run is None:
            return DevCert(cert, key, False, "existing")
        status = run([found, "x509", "-checkend", str(RENEW_BEFORE), "-noout",
                      "-in", str(cert)])
        if status == 0:
            return DevCert(cert, key, False, "existing")

    try:
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
    except OSError as exc:
        raise DevCertError(f"cannot create the certificate directory {directory}: {exc}") from None

    if found is not None and run is not None:
        new_cert, new_key = _openssl_generate(found, directory, run)
        generator = "openssl"
    elif _cryptography_available():
        new_cert, new_key = _cryptography_generate(directory, now)
        generator = "cryptography"
    else:
        raise DevCertError(
            "cannot generate a development certificate: neither the 'openssl' command nor the "
            "Python package 'cryptography' is available. Install one of them (e.g. "
            "'apt-get install openssl', 'brew install openssl', or 'pip install cryptography'), "
            "or pass your own certificate with --tls-cert/--tls-key."
        )
    os.chmod(new_key, 0o600)
    new_key.replace(key)
    new_cert.replace(cert)
    return DevCert(cert, key, True, generator)


def node_hint(cert: Path) -> str:
    """The environment setting that makes Node (hyco-ws, hyco-https) trust ``cert`` (§5.3)."""
    return f"NODE_EXTRA_CA_CERTS={cert}"
