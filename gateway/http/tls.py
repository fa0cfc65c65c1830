"""TLS on the listener (docs/reference.md#tls): the server's SSL context, swapped on reload.

:func:`server_context` builds the context ``[server] tls_*`` describe, or
refuses with a :class:`~keygate.config.ConfigError` naming the setting and
the problem (``keygate check-config`` and a reload report it as they report
any other bad setting). Only TLS 1.2 and 1.3, and for TLS 1.2 only the
forward-secret AEAD suites of Mozilla's "intermediate" server configuration
(TLS 1.3's suites all are); no compression (CRIME), no renegotiation.

:class:`ListenerTls` is the context a listening socket keeps for its whole
life: each new handshake takes the current certificates from it (a server
name callback hands the connection the context loaded last), so a reload
changes the certificate, key and client CAs for new connections while open
connections keep theirs, and the socket is never closed.
"""

from __future__ import annotations

import ssl
from typing import Final

from keygate.config import ConfigError
from keygate.config.settings import Settings

# Mozilla's "intermediate" TLS 1.2 suites (ECDHE only: no DH parameters to keep).
CIPHERS: Final = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The listener's SSL context, or None without ``server.tls_cert_file``.

    Raises ConfigError (one line: the source, the setting, the problem) when a
    file cannot be read or is not what it should be.
    """
    server = settings.server
    cert, key, client_ca = server.tls_cert_file, server.tls_key_file, server.tls_client_ca_file
    if cert is None or key is None:
        return None
    source = settings.source
    for name, path in (
        ("tls_cert_file", cert),
        ("tls_key_file", key),
        ("tls_client_ca_file", client_ca),
    ):
        if path is not None:
            _readable(source, name, path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        # A certificate file that holds no certificate is the certificate's fault.
        ssl.create_default_context(cafile=cert)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{source}: server.tls_cert_file: no PEM certificate in {cert} ({_reason(exc)})"
        ) from None
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except (ssl.SSLError, _Encrypted) as exc:
        raise ConfigError(
            f"{source}: server.tls_key_file: {key} is not the unencrypted PEM private key "
            f"of the certificate ({_reason(exc)})"
        ) from None
    if client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"{source}: server.tls_client_ca_file: no PEM CA certificate in {client_ca} "
                f"({_reason(exc)})"
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class _Encrypted(Exception):
    """The private key asks for a password: keygate starts unattended, with none."""

    def __str__(self) -> str:
        return "it is encrypted"


def _no_password() -> str:
    raise _Encrypted()


def _readable(source: str, name: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        problem = "file not found"
    except PermissionError:
        problem = "permission denied"
    except IsADirectoryError:
        problem = "is a directory, not a PEM file"
    except OSError as exc:
        problem = exc.strerror or "cannot be read"
    else:
        return
    raise ConfigError(f"{source}: server.{name}: {path}: {problem}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.strerror or "not valid"
    return str(exc)


class ListenerTls:
    """The SSL context a listening socket keeps; :meth:`replace` swaps the certificates
    new handshakes get (open connections keep theirs)."""

    __slots__ = ("context", "current")

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context  # given to the listening socket once, for good
        self.current = context
        # OpenSSL calls this for every ClientHello, with or without a server name.
        context.sni_callback = self._choose

    def _choose(
        self, connection: ssl.SSLObject | ssl.SSLSocket, name: str | None, context: ssl.SSLContext
    ) -> None:
        current = self.current
        if current is not context:
            # The certificate, key and trusted client CAs are the new context's.
            connection.context = current

    def replace(self, context: ssl.SSLContext) -> None:
        """New handshakes use ``context``'s certificate, key and client CAs."""
        # Whether a client certificate is asked for is set when a connection
        # starts, from the listening context, before the switch.
        self.context.verify_mode = context.verify_mode
        self.current = context
