"""How the API is served: plain HTTP on loopback, or TLS (``--tls-cert``/``--tls-key``).

SigV4 authenticates requests but does not hide them: over plain HTTP anyone on the path reads
payloads, responses (function code links, environment variables) and can replay a captured
request within the signature's window. `Server` warns loudly when it binds a non-loopback
address without TLS.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path


class TlsConfigError(ValueError):
    """The certificate or key cannot be used; the message names the file and the step."""


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2+) for `cert` (PEM chain) and `key` (PEM private key)."""
    for what, path in (("certificate", cert), ("private key", key)):
        if not path.is_file():
            raise TlsConfigError(f"TLS setup failed at step 'read {what}': {path} is not a readable file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(
            f"TLS setup failed at step 'load certificate {cert} and key {key}': {exc} "
            "(both must be PEM, and the key must match the certificate)"
        ) from exc
    return context


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the API on this machine (``localhost``, 127/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
