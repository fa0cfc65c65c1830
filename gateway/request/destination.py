"""WebDAV's second target: the ``Destination`` header (RFC 4918 §10.3) — pure.

``COPY`` and ``MOVE`` act on the request path *and* on the resource the
``Destination`` header names. keygate holds that path to the rules of the
request path: it must be on this gateway (same host), it is normalised the
same way, the key must be allowed the method there too, and the upstream
receives exactly the path that was checked (docs/security.md, "WebDAV").

No other RFC 4918 header names a resource to act on: ``If`` tags name
resources whose state is a precondition, ``Overwrite`` and ``Depth`` are flags.
"""

from __future__ import annotations

from typing import Final

from yarl import URL

from keygate.gateway.errors import BadRequest
from keygate.gateway.request.pathnorm import normalise_path

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class BadDestination(BadRequest):
    default_code = "bad_destination"
    default_message = "The Destination header must name a path on this host."


def destination_path(value: str, host: str | None, scheme: str) -> tuple[str, bool]:
    """(normalised path, whether ``value`` was an absolute URI) of a Destination.

    ``host`` is the request's Host header and ``scheme`` its scheme: an
    absolute URI must name that same host and port. Raises
    :class:`BadDestination` (or :class:`~gateway.errors.BadPath` for a path
    that normalisation refuses).
    """
    value = value.strip()
    if value.startswith("/"):
        if value.startswith("//"):
            raise BadDestination()  # a network-path reference names another host
        raw = value
        absolute = False
    else:
        try:
            url = URL(value, encoded=True)
        except ValueError:
            raise BadDestination() from None
        try:
            if url.scheme not in _DEFAULT_PORTS or not url.raw_host or url.raw_user is not None:
                raise BadDestination()
            if not _same_host(url, host, scheme):
                raise BadDestination()
        except ValueError:  # yarl parses lazily: a port like "1x" or "99999999999"
            raise BadDestination() from None
        if url.raw_query_string or url.raw_fragment:
            raise BadDestination()
        raw = url.raw_path or "/"
        absolute = True
    if "?" in raw or "#" in raw:
        raise BadDestination()
    return normalise_path(raw), absolute


def _same_host(url: URL, host: str | None, scheme: str) -> bool:
    if not host:
        return False
    try:
        own = URL.build(scheme=scheme if scheme in _DEFAULT_PORTS else "http", authority=host)
    except ValueError:
        return False
    if (own.raw_host or "").lower() != (url.raw_host or "").lower():
        return False
    if url.explicit_port is None and own.explicit_port is None:
        return True
    return url.port == own.port
