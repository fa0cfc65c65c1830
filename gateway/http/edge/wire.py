"""Response heads as bytes, framed exactly as aiohttp's server frames them.

The edge protocol (:mod:`gateway.edge`) answers without aiohttp's
``StreamResponse``; a client must not be able to tell which of the two
answered. So the rules here are aiohttp's (``StreamResponse._prepare_headers``
and ``Response._start``, aiohttp 3.x), in its order: the given headers, then
Content-Length or Transfer-Encoding, a default Content-Type, Date, Server,
Connection, keygate's X-Request-Id, and last a counted request's RateLimit
fields (``extra``; aiohttp's side adds both in ``on_response_prepare``,
gateway/http/app.py). ``tests/gateway/test_edge_parity`` holds the two
servers to it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from http import HTTPStatus
from typing import Final

from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE

from keygate.gateway.errors import KeygateError

Pairs = list[tuple[str, str]]

_REASONS: Final = {s.value: s.phrase for s in HTTPStatus}
_EMPTY_STATUSES: Final = frozenset((204, 304, *range(100, 200)))
_FIXED: Final = frozenset(
    ("content-length", "transfer-encoding", "content-type", "date", "server", "connection")
)
_X_REQUEST_ID: Final = "x-request-id"
_OCTET_STREAM: Final = "application/octet-stream"


def reason_of(status: int, reason: str | None) -> str:
    return reason or _REASONS.get(status, "")


def response_head(
    version: str,
    status: int,
    reason: str | None,
    headers: Pairs,
    *,
    method: str,
    body_length: int | None,
    keep_alive: bool,
    request_id: str,
    extra: Pairs | None = None,
) -> tuple[bytes, bool, bool]:
    """(head bytes, chunked, keep_alive) for a response to a ``method`` request.

    ``body_length`` is the length of a body sent whole (it sets Content-Length
    when the headers have none); None streams the body: then it keeps the
    headers' Content-Length, or is chunked to HTTP/1.1 and ends the
    connection on HTTP/1.0. ``keep_alive`` is the request's wish; the result
    says whether the connection stays open. ``extra`` pairs come last.
    """
    return _head(
        version,
        status,
        reason,
        headers,
        method,
        body_length,
        keep_alive,
        rfc822_formatted_time(),
        request_id,
        extra,
    )


_MAX_ALLOWED_HEADS: Final = 4096


class AllowedHeads:
    """Forward-auth's bodiless 200s (:func:`response_head` framing): the head up
    to X-Request-Id is the same for one key's every answer in one second, so
    it is built once per key, version, method and keep-alive, and kept while
    the second lasts."""

    __slots__ = ("_date", "_heads")

    def __init__(self) -> None:
        self._date = ""
        self._heads: dict[tuple[int, str, str, bool], tuple[object, bytes, bool]] = {}

    def head(
        self,
        version: str,
        owner: object,
        pairs: Callable[[], tuple[tuple[str, str], ...]],
        *,
        method: str,
        keep_alive: bool,
        request_id: str,
        extra: Pairs | None = None,
    ) -> tuple[bytes, bool]:
        """The head for ``pairs()`` (the same for as long as ``owner`` lives), and
        whether the connection stays open."""
        date = rfc822_formatted_time()
        heads = self._heads
        if date != self._date or len(heads) > _MAX_ALLOWED_HEADS:
            heads.clear()  # a new second: a new Date (or many keys: start again)
            self._date = date
        key = (id(owner), version, method, keep_alive)
        found = heads.get(key)
        if found is None or found[0] is not owner:
            lead, _, still = _head(version, 200, None, pairs(), method, 0, keep_alive, date, None)
            found = heads[key] = (owner, lead, still)
        _, lead, keep_alive = found
        tail = "".join(f"{name}: {value}\r\n" for name, value in extra) if extra else ""
        return b"%sX-Request-Id: %s\r\n%s\r\n" % (lead, _encode(request_id), _encode(tail)), (
            keep_alive
        )


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _head(
    version: str,
    status: int,
    reason: str | None,
    headers: Pairs | tuple[tuple[str, str], ...],
    method: str,
    body_length: int | None,
    keep_alive: bool,
    date: str,
    request_id: str | None,
    extra: Pairs | None = None,
) -> tuple[bytes, bool, bool]:
    """The head; without ``request_id``, all of it up to X-Request-Id, for the caller to end.

    keygate's X-Request-Id replaces the first one in ``headers`` where it
    stands (aiohttp's ``headers[name] = value``), or comes last.
    """
    id_line = None if request_id is None else f"X-Request-Id: {request_id}\r\n"
    must_be_empty = status in _EMPTY_STATUSES or method == "HEAD"
    out: list[str] = [f"HTTP/{version} {status} {reason_of(status, reason)}\r\n"]
    length: int | None = None
    have_length = have_type = have_date = have_server = have_connection = False
    for name, value in headers:
        low = name.lower()
        if low in _FIXED:
            if low == "content-length":
                if status in _EMPTY_STATUSES:
                    continue  # RFC 9110 §8.6: none on 1xx, 204 and 304
                have_length = True
                try:
                    length = int(value)
                except ValueError:
                    length = None
            elif low == "transfer-encoding":
                if must_be_empty:
                    continue
            elif low == "content-type":
                have_type = True
            elif low == "date":
                have_date = True
            elif low == "server":
                have_server = True
            else:
                have_connection = True
        elif low == _X_REQUEST_ID:
            if id_line is not None:
                out.append(id_line)  # keygate's own, once, in the first one's place
                id_line = ""
            continue
        out += (name, ": ", value, "\r\n")
    chunked = False
    if body_length is not None:
        # aiohttp's Response: a length unless the status forbids one; HEAD
        # states the length its GET would have (none when that is unknown).
        if not have_length and status not in _EMPTY_STATUSES and (body_length or method != "HEAD"):
            out.append(f"Content-Length: {body_length}\r\n")
            have_length, length = True, body_length
    elif not have_length and not must_be_empty:
        if version == "1.1":
            out.append("Transfer-Encoding: chunked\r\n")
            chunked = True
        else:
            keep_alive = False  # HTTP/1.0: the body ends with the connection
    if not must_be_empty and not have_type and (length != 0 or not have_length):
        out.append(f"Content-Type: {_OCTET_STREAM}\r\n")
    if not have_date:
        out += ("Date: ", date, "\r\n")
    if not have_server:
        out += ("Server: ", SERVER_SOFTWARE, "\r\n")
    if not have_connection:
        if keep_alive:
            if version == "1.0":
                out.append("Connection: keep-alive\r\n")
        elif version == "1.1":
            out.append("Connection: close\r\n")
    if id_line is not None:
        out.append(id_line)
        if extra:
            out += [f"{name}: {value}\r\n" for name, value in extra]
        out.append("\r\n")
    return _encode("".join(out)), chunked, keep_alive


def error_response(
    exc: KeygateError,
    *,
    version: str,
    method: str,
    keep_alive: bool,
    request_id: str,
    extra: Pairs | None = None,
) -> tuple[bytes, bool]:
    """The JSON error as a whole response (head and body), and keep-alive;
    ``extra`` pairs come last."""
    body = exc.body()
    given = tuple(exc.headers.items()) if exc.headers else ()
    lead, keep_alive = _error_head(
        exc.status, given, len(body), version, method, keep_alive, rfc822_formatted_time()
    )
    tail = "".join(f"{name}: {value}\r\n" for name, value in extra) if extra else ""
    answer = b"%sX-Request-Id: %s\r\n%s\r\n" % (lead, _encode(request_id), _encode(tail))
    return (answer if method == "HEAD" else answer + body), keep_alive


@functools.lru_cache(maxsize=256)
def _error_head(
    status: int,
    extra: tuple[tuple[str, str], ...],
    length: int,
    version: str,
    method: str,
    keep_alive: bool,
    date: str,
) -> tuple[bytes, bool]:
    # Refusals repeat (a flood is one refusal many times): framed once a second.
    lead, _, keep_alive = _head(
        version,
        status,
        None,
        (*extra, ("Content-Type", "application/json")),
        method,
        length,
        keep_alive,
        date,
        None,
    )
    return lead, keep_alive
