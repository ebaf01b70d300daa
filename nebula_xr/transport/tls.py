"""TLS for the XML-RPC listener: the server's certificate and key, loaded and checked.

Everything that can be wrong with the files (missing, unreadable, not PEM, a key that
does not belong to the certificate) is found here, at start-up, and reported as a
:class:`TLSSetupError` naming the file, instead of failing the first handshake.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL
from twisted.internet.ssl import CertificateOptions

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


class TLSSetupError(Exception):
    """The certificate or key cannot be used; the message says which and why."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TLSSetupError(f"Can not read the TLS {what} {path}: {error.strerror}") from None


def server_options(cert: Path, key: Path) -> CertificateOptions:
    """TLS options serving ``cert`` (a PEM file: the certificate, then its chain) with ``key``."""
    blocks = _PEM_CERTIFICATE.findall(_read(cert, "certificate"))
    key_pem = _read(key, "key")
    if not blocks:
        raise TLSSetupError(f"The TLS certificate {cert} holds no PEM certificate")
    try:
        certificates = [x509.load_pem_x509_certificate(block) for block in blocks]
    except (ValueError, UnsupportedAlgorithm):
        raise TLSSetupError(f"The TLS certificate {cert} is not a valid PEM certificate") from None
    try:
        private_key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # not a key, or one with a password
        raise TLSSetupError(
            f"The TLS key {key} is not a PEM private key (or is encrypted)"
        ) from None
    options = CertificateOptions(
        privateKey=private_key,
        certificate=certificates[0],
        extraCertChain=certificates[1:],
    )
    try:
        options.getContext()  # builds the context now: checks that key and certificate match
    except SSL.Error:
        raise TLSSetupError(f"The TLS key {key} does not match the certificate {cert}") from None
    return options
