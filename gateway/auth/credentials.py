"""Find the keygate credential in a request (docs/reference.md#presenting-a-key).

Sources, in ``auth.sources`` order: ``authorization`` (``Bearer``),
``x-api-key``, ``basic`` (key id as user name, secret+checksum as password)
and ``query:<name>``. Every occurrence is collected: two different values are
ambiguous (400), because an upstream or a log might act on the other one.
"""

from __future__ import annotations

import binascii
import functools
import re
from base64 import b64decode
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_plus

from aiohttp import hdrs
from multidict import CIMultiDictProxy

from keygate.gateway.auth import keyformat
from keygate.gateway.auth.imported import ImportedDigests
from keygate.gateway.errors import AmbiguousApiKey, missing_api_key


@dataclass(frozen=True, slots=True)
class Credential:
    token: str
    # Header names that carried it, removed before forwarding.
    drop_headers: tuple[str, ...]
    # Query parameter that carried it, removed before forwarding.
    drop_query: str | None = None


@dataclass(frozen=True, slots=True)
class Sources:
    bearer: bool
    x_api_key: bool
    basic: bool
    query: str | None

    @classmethod
    def parse(cls, sources: Sequence[str]) -> Sources:
        query = next((s.split(":", 1)[1] for s in sources if s.startswith("query:")), None)
        return cls(
            bearer="authorization" in sources,
            x_api_key="x-api-key" in sources,
            basic="basic" in sources,
            query=query,
        )


X_API_KEY = "X-API-Key"


def find_credential(
    headers: CIMultiDictProxy[str], raw_query: str, sources: Sources, prefix: str
) -> Credential:
    """Return the one credential of the request; raise 401 missing / 400 ambiguous."""
    found: list[str] = []
    drop: list[str] = []
    drop_query = None
    for value in headers.getall(hdrs.AUTHORIZATION, ()):
        scheme, _, rest = value.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and sources.bearer:
            found.append(rest.strip())
        elif scheme == "basic" and sources.basic:
            found.append(_from_basic(rest.strip(), prefix))
        elif not carries_token(value, prefix):
            continue  # meant for the upstream: passes through untouched
        if hdrs.AUTHORIZATION not in drop:
            drop.append(hdrs.AUTHORIZATION)
    values = headers.getall(X_API_KEY, ())
    if values:
        if sources.x_api_key:
            found.extend(v.strip() for v in values)
            drop.append(X_API_KEY)
        elif any(carries_token(v, prefix) for v in values):
            drop.append(X_API_KEY)  # not read here, but never sent on either
    if sources.query is not None and raw_query:
        for value in query_values(raw_query, sources.query):
            found.append(value.strip())
            drop_query = sources.query
    tokens = {t for t in found if t}
    if not tokens:
        raise missing_api_key()
    if len(tokens) > 1:
        raise AmbiguousApiKey
    return Credential(tokens.pop(), tuple(drop), drop_query)


def stray_credentials(
    headers: CIMultiDictProxy[str],
    raw_query: str,
    sources: Sources,
    prefix: str,
    imported: ImportedDigests | None = None,
) -> Credential | None:
    """Where a keygate credential was presented to a public route, if anywhere.

    Nobody checks a key there, but the upstream must still never receive one
    (docs/reference.md#presenting-a-key: the credential is removed before
    forwarding; clients often send their key on every request). Values that
    parse as keygate tokens, checksum included, count, and when the store
    holds imported keys (``imported``, the digests in memory) a ``Bearer``,
    ``X-API-Key`` or query value that is one of them: an upstream's own
    Bearer token passes untouched.
    """
    drop: list[str] = []
    for value in headers.getall(hdrs.AUTHORIZATION, ()):
        if carries_token(value, prefix):
            drop.append(hdrs.AUTHORIZATION)
            break
    x_api_keys = headers.getall(X_API_KEY, ())
    if any(carries_token(v, prefix) for v in x_api_keys):
        drop.append(X_API_KEY)
    drop_query = None
    in_query = (
        query_values(raw_query, sources.query) if sources.query is not None and raw_query else ()
    )
    if any(_well_formed(v.strip(), prefix) for v in in_query):
        drop_query = sources.query
    if imported:  # only when the store holds imported keys: no cost otherwise
        if hdrs.AUTHORIZATION not in drop and any(
            _is_imported(_bearer(v), imported) for v in headers.getall(hdrs.AUTHORIZATION, ())
        ):
            drop.append(hdrs.AUTHORIZATION)
        if X_API_KEY not in drop and any(_is_imported(v.strip(), imported) for v in x_api_keys):
            drop.append(X_API_KEY)
        if drop_query is None and any(_is_imported(v.strip(), imported) for v in in_query):
            drop_query = sources.query
    if not drop and drop_query is None:
        return None
    return Credential("", tuple(drop), drop_query)


def _bearer(value: str) -> str:
    """The token of a ``Bearer`` Authorization value (scheme in any case), else ""."""
    scheme, _, rest = value.strip().partition(" ")
    return rest.strip() if scheme.lower() == "bearer" else ""


def _is_imported(token: str, imported: ImportedDigests) -> bool:
    """Whether ``token`` is an imported key's (its digest in memory)."""
    return bool(token) and token.isascii() and keyformat.digest(token) in imported


def carries_token(value: str, prefix: str) -> bool:
    """Whether an Authorization value holds a well-formed keygate token anywhere,
    in whatever scheme: bare, ``Token``, ``Digest``, ``Bearer`` with a tab,
    or inside ``Basic`` credentials. Such a header never reaches an upstream
    (a token is a secret between its holder and keygate), even when another
    credential authenticated the request."""
    if prefix + "_" not in value and not _BASE64_PART.search(value):
        return False
    if any(_well_formed(m, prefix) for m in _token_shapes(prefix).findall(value)):
        return True
    for part in _BASE64_PART.findall(value):
        try:
            decoded = b64decode(part + "=" * (-len(part) % 4)).decode("latin-1")
        except (binascii.Error, ValueError):
            continue
        if any(_well_formed(m, prefix) for m in _token_shapes(prefix).findall(decoded)):
            return True
        user, sep, password = decoded.partition(":")
        if sep and _well_formed(f"{prefix}_{user}_{password}", prefix):
            return True  # the basic source's own form: key id as user name
    return False


# Long enough to hold a token's worth of base64 (the key id and secret).
_BASE64_PART: Final = re.compile(r"[A-Za-z0-9+/]{48,}={0,2}")


@functools.lru_cache(maxsize=8)
def _token_shapes(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(prefix)}_[0-9a-z]{{12}}_[0-9A-Za-z]{{38}}")


def _well_formed(token: str, prefix: str) -> bool:
    try:
        keyformat.parse(token, prefix)
    except keyformat.TokenFormatError:
        return False
    return True


def _from_basic(encoded: str, prefix: str) -> str:
    try:
        decoded = b64decode(encoded, validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return "\x00invalid"  # present but unusable: fails the format check
    user, sep, password = decoded.partition(":")
    if not sep:
        return "\x00invalid"
    return f"{prefix}_{user}_{password}"


def query_values(raw_query: str, name: str) -> list[str]:
    return [unquote_plus(v) for n, v in _pairs(raw_query) if n == name]


def strip_token_params(raw_query: str, prefix: str) -> str:
    """The raw query without any parameter whose value holds a well-formed
    keygate token (``?api_key=…`` when that is no source): a token never
    reaches an upstream. The rest passes byte for byte."""
    if prefix not in raw_query:
        return raw_query
    return "&".join(
        part
        for part in raw_query.split("&")
        if not carries_token(unquote_plus(part.partition("=")[2]), prefix)
    )


def strip_query_param(raw_query: str, name: str) -> str:
    """The raw query without ``name``, every other byte as the client sent it."""
    return "&".join(part for part in raw_query.split("&") if _pair(part)[0] != name)


def _pairs(raw_query: str) -> list[tuple[str, str]]:
    return [_pair(part) for part in raw_query.split("&") if part]


def _pair(part: str) -> tuple[str, str]:
    name, _, value = part.partition("=")
    return unquote_plus(name), value
