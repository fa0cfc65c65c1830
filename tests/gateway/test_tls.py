"""TLS on the listener (docs/reference.md#tls), with certificates made by ``trustme``.

Both front ends serve over TLS and tell the upstream ``X-Forwarded-Proto:
https``; only TLS 1.2+ with forward-secret AEAD suites is spoken; a client CA
bundle makes a client certificate mandatory; a reload gives new connections
the new certificate while an open connection goes on with its own; and
``keygate check-config`` names the setting of every bad TLS file.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import ssl
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from keygate.config.settings import Settings
from keygate.gateway.cli import main
from keygate.gateway.http.reload import Reloader, check
from keygate.gateway.http.tls import ListenerTls
from tests.support.gateway import Keygate, default_route, make_settings, start_keygate
from tests.support.gateway import started_client as plain_started_client
from tests.support.raw import IO_TIMEOUT, Reply, bearer, http, read_final
from tests.support.upstreams import Recorder


@dataclasses.dataclass
class Files:
    cert: Path
    key: Path


def issue(ca: trustme.CA, where: Path, name: str) -> Files:
    """A server certificate for 127.0.0.1 signed by ``ca``, as PEM files."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = Files(where / f"{name}.crt", where / f"{name}.key")
    files.cert.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(files.key))
    return files


def client_context(ca: trustme.CA, client: trustme.CA | None = None) -> ssl.SSLContext:
    """A client that trusts ``ca`` (and presents a certificate of ``client``)."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if client is not None:
        client.issue_cert("client@example.test").configure_cert(ctx)
    return ctx


def tls_settings(
    tmp_path: Path, up: Recorder, files: Files, client_ca: Path | None = None, **server: object
) -> Settings:
    return make_settings(
        tmp_path,
        default_route(up.url),
        server={
            "tls_cert_file": str(files.cert),
            "tls_key_file": str(files.key),
            "tls_client_ca_file": None if client_ca is None else str(client_ca),
            **server,
        },
    )


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[Keygate, ListenerTls]]:
    """The real app over TLS as ``keygate serve`` sets it up (check, ListenerTls)."""
    context = check(settings)
    assert context is not None
    tls = ListenerTls(context)

    async def start(server: object) -> object:
        return await plain_started_client(server, ssl=tls.context)  # type: ignore[arg-type]

    kg = await start_keygate(settings, start)  # type: ignore[arg-type]
    try:
        yield kg, tls
    finally:
        await kg.client.close()


class TlsConn:
    """One raw client connection over TLS."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext) -> TlsConn:
        async with asyncio.timeout(IO_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        return cls(reader, writer)

    async def get(self, target: str, token: str) -> Reply:
        self.writer.write(http("GET", target, [bearer(token)]))
        async with asyncio.timeout(IO_TIMEOUT):
            return await read_final(self.reader)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


async def refused(port: int, ctx: ssl.SSLContext, token: str) -> bool:
    """Whether the server refuses this client: the handshake fails, or the connection
    ends before an answer (TLS 1.3 refuses a client certificate after the handshake)."""
    try:
        conn = await TlsConn.open(port, ctx)
    except (ssl.SSLError, ConnectionError):
        return True
    try:
        await conn.get("/x", token)
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return True
    finally:
        await conn.close()
    return False


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.mark.parametrize("fast_path", [True, False], ids=["edge", "aiohttp"])
async def test_tls_both_front_ends_serve_and_tell_the_upstream_https(
    tmp_path: Path, upstream: Recorder, ca: trustme.CA, fast_path: bool
) -> None:
    settings = tls_settings(tmp_path, upstream, issue(ca, tmp_path, "s"), fast_path=fast_path)
    async with serving(settings) as (kg, _):
        token = await kg.make_key(["default"])
        conn = await TlsConn.open(kg.port, client_context(ca))
        try:
            for n in range(3):  # keep-alive over TLS
                answer = await conn.get(f"/x/{n}", token)
                assert answer.status == 200, answer.body
                assert json.loads(answer.body)["path"] == f"/x/{n}"
            edge = kg.client.server.runner.server.edge
            # The edge takes TLS connections too (served, and kept, by it).
            assert (edge is not None and len(edge.connections) == 1) is fast_path
            # A chunked upload: the edge hands the TLS connection to aiohttp mid-way.
            conn.writer.write(
                http("POST", "/up", [bearer(token), ("Transfer-Encoding", "chunked")])
                + b"5\r\nhello\r\n0\r\n\r\n"
            )
            async with asyncio.timeout(IO_TIMEOUT):
                posted = await read_final(conn.reader)
            assert (posted.status, json.loads(posted.body)["body_len"]) == (200, 5)
            assert (await conn.get("/after", token)).status == 200
            assert edge is None or not edge.connections
        finally:
            await conn.close()
    assert [s.header("X-Forwarded-Proto") for s in upstream.seen] == ["https"] * 5


@pytest.mark.parametrize(
    "client",
    [
        {"maximum_version": ssl.TLSVersion.TLSv1_1, "minimum_version": ssl.TLSVersion.TLSv1},
        {"maximum_version": ssl.TLSVersion.TLSv1_2, "ciphers": "AES128-SHA:AES256-GCM-SHA384"},
        {"maximum_version": ssl.TLSVersion.TLSv1_2, "ciphers": "ECDHE-RSA-AES128-SHA"},
    ],
    ids=["tls-1.1", "no-forward-secrecy", "cbc"],
)
async def test_tls_old_protocols_and_weak_ciphers_are_refused(
    tmp_path: Path, upstream: Recorder, ca: trustme.CA, client: dict[str, object]
) -> None:
    settings = tls_settings(tmp_path, upstream, issue(ca, tmp_path, "s"))
    async with serving(settings) as (kg, _):
        token = await kg.make_key(["default"])
        ctx = client_context(ca)
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        for name, value in client.items():
            if name == "ciphers":
                ctx.set_ciphers(f"{value}:@SECLEVEL=0")
            else:
                with warnings.catch_warnings():  # the client may offer what is deprecated
                    warnings.simplefilter("ignore", DeprecationWarning)
                    setattr(ctx, name, value)
        assert await refused(kg.port, ctx, token)
        assert not await refused(kg.port, client_context(ca), token)


async def test_tls_client_ca_makes_a_client_certificate_mandatory(
    tmp_path: Path, upstream: Recorder, ca: trustme.CA
) -> None:
    clients, strangers = trustme.CA(), trustme.CA()
    bundle = tmp_path / "clients.pem"
    clients.cert_pem.write_to_path(str(bundle))
    settings = tls_settings(tmp_path, upstream, issue(ca, tmp_path, "s"), client_ca=bundle)
    async with serving(settings) as (kg, _):
        token = await kg.make_key(["default"])
        assert await refused(kg.port, client_context(ca), token)
        assert await refused(kg.port, client_context(ca, strangers), token)
        assert not await refused(kg.port, client_context(ca, clients), token)
    assert len(upstream.seen) == 1


async def test_tls_reload_gives_new_connections_the_new_certificate_and_keeps_open_ones(
    tmp_path: Path, upstream: Recorder, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    settings = tls_settings(tmp_path, upstream, issue(ca, tmp_path, "old"))
    other = trustme.CA()
    async with serving(settings) as (kg, tls):
        token = await kg.make_key(["default"])
        kept = await TlsConn.open(kg.port, client_context(ca))
        try:
            assert (await kept.get("/before", token)).status == 200
            new_files = issue(other, tmp_path, "new")
            renewed = tls_settings(tmp_path, upstream, new_files)
            reload = Reloader(kg.client.server.runner, lambda: renewed, tls)
            assert reload()
            assert await refused(kg.port, client_context(ca), token)  # the old CA's no more
            assert not await refused(kg.port, client_context(other), token)
            assert (await kept.get("/after", token)).status == 200  # never dropped

            # A key that is not the certificate's: refused, the running one stays.
            mismatched = tls_settings(
                tmp_path, upstream, Files(new_files.cert, issue(ca, tmp_path, "third").key)
            )
            assert not Reloader(kg.client.server.runner, lambda: mismatched, tls)()
            assert not await refused(kg.port, client_context(other), token)
        finally:
            await kept.close()
    refusals = [r for r in caplog.records if "reload refused" in r.getMessage()]
    assert len(refusals) == 1 and "server.tls_key_file" in refusals[0].getMessage()


# --- keygate check-config ------------------------------------------------------------------
def encrypted_key(files: Files) -> Path:
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    path = files.key.with_suffix(".enc")
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return path


def bad_tls(case: str, tmp_path: Path, ca: trustme.CA) -> tuple[str, str]:
    """A [server] table with one TLS problem, and the setting the refusal must name."""
    files = issue(ca, tmp_path, "s")
    cert, key = files.cert, files.key
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    other = issue(ca, tmp_path, "other").key
    table = {
        "missing cert": (f'tls_cert_file = "{tmp_path}/none.crt"\ntls_key_file = "{key}"', "cert"),
        "not a cert": (f'tls_cert_file = "{garbage}"\ntls_key_file = "{key}"', "cert"),
        "key of another": (f'tls_cert_file = "{cert}"\ntls_key_file = "{other}"', "key"),
        "encrypted key": (
            f'tls_cert_file = "{cert}"\ntls_key_file = "{encrypted_key(files)}"',
            "key",
        ),
        "key is a directory": (f'tls_cert_file = "{cert}"\ntls_key_file = "{tmp_path}"', "key"),
        "no key": (f'tls_cert_file = "{cert}"', "key"),
        "no cert": (f'tls_key_file = "{key}"', "cert"),
        "client CA not PEM": (
            f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\n'
            f'tls_client_ca_file = "{garbage}"',
            "client_ca",
        ),
        "client CA without TLS": (f'tls_client_ca_file = "{cert}"', "client_ca"),
    }
    text, setting = table[case]
    return f"[server]\n{text}\n", f"server.tls_{setting}_file"


BAD_TLS = [
    "missing cert",
    "not a cert",
    "key of another",
    "encrypted key",
    "key is a directory",
    "no key",
    "no cert",
    "client CA not PEM",
    "client CA without TLS",
]


@pytest.mark.parametrize("case", BAD_TLS)
def test_check_config_names_the_bad_tls_setting(
    tmp_path: Path, ca: trustme.CA, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text, setting = bad_tls(case, tmp_path, ca)
    config = tmp_path / "keygate.toml"
    config.write_text(text)
    assert main(["check-config", "--config", str(config)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith(f"keygate: config error: {config}: {setting}: "), err
    assert "Traceback" not in err and "secret" not in err


def test_check_config_valid_file_with_tls(
    tmp_path: Path, ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    files = issue(ca, tmp_path, "s")
    config = tmp_path / "keygate.toml"
    config.write_text(
        f'[server]\ntls_cert_file = "{files.cert}"\ntls_key_file = "{files.key}"\n'
        '[[routes]]\nname = "a"\nprefix = "/a"\nupstream = "http://127.0.0.1:9"\n'
    )
    assert main(["check-config", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert out == f"keygate: {config}: the configuration is valid (1 route, TLS)\n"
    assert err == ""


@pytest.mark.parametrize(
    ("text", "setting"),
    [
        ("[server]\nworkers = 0\n", "server.workers"),
        ("[[routes]]\nname = 'a'\nprefix = '/a'\nupstream = 'ftp://x'\n", "routes.a.upstream"),
        ("[auth]\nnope = 1\n", "auth.nope"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_check_config_invalid_file_exits_2_with_one_line(
    tmp_path: Path, text: str, setting: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "keygate.toml"
    config.write_text(text)
    assert main(["check-config", "--config", str(config)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"keygate: config error: {config}: ") and setting in err, err
