"""The edge's forward-auth answers: ``{admin_prefix}/auth`` without aiohttp.

A proxy asks once per request it forwards, so this is a hot path of its own:
a cached key with in-memory limits is judged and answered from the
connection's callback, with no task, as the edge forwards; a cache miss or a
Redis limiter takes one task. The decision is
:mod:`keygate.gateway.forwardauth`'s, as on aiohttp's side
(:mod:`keygate.gateway.http.forwardauth`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from keygate.gateway import forwardauth, pipeline
from keygate.gateway.errors import KeygateError
from keygate.gateway.forwardauth import Judged
from keygate.gateway.http.edge.parse import Request
from keygate.gateway.request.headers import X_REQUEST_ID, request_id_or_new

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from keygate.gateway.http.edge.exchange import Exchange
    from keygate.gateway.http.edge.server import Edge

# _forward_auth's answer for a question a task answers later (True: answered
# now, the connection open; None: answered now, the connection closing).
LATER: Final = False


class AuthGate:
    """The forward-auth half of :class:`~keygate.gateway.http.edge.protocol.EdgeProtocol`."""

    __slots__ = ()
    _edge: Edge
    _peer: str

    if TYPE_CHECKING:  # the connection half's and Forwarding's

        def _write(self, data: bytes) -> None: ...
        def _refuse(self, exc: KeygateError, x: Exchange) -> bool: ...
        def _log(self, x: Exchange) -> None: ...
        def _spawn(self, x: Exchange, work: Coroutine[None, None, None]) -> None: ...

    def _forward_auth(self, request: Request, x: Exchange, tail: str) -> bool | None:
        """Judge ``x`` (a forward-auth request): answered now (True: the
        connection stays open; None: it closes), or LATER by a task."""
        edge = self._edge
        gw = edge.gw
        nginx_compat = gw.settings.forward_auth.nginx_compat
        try:
            original = forwardauth.original_request(
                gw, x.method, tail, x.query, x.headers, self._peer
            )
            path, query = forwardauth.target(gw, original)
            try:
                judged = forwardauth.begin(gw, original, path, query, x.headers)
            except KeygateError:
                x.route = pipeline.route_name(gw, path)  # refused, the log names it too
                raise
            x.route = judged.resolved.route.name
            if judged.resolved.credential is not None:
                principal = judged.principal
                if principal is None:
                    return self._later(x, judged, nginx_compat)
                x.key_id = principal.key_id
                forwardauth.authorise(gw, judged, self._peer)
                if principal.limits is not None:
                    usage = x.usage = forwardauth.take_now(gw, judged)
                    if usage is None:
                        return self._later(x, judged, nginx_compat)
                    usage.check()
        except Exception as exc:
            error = (
                forwardauth.refusal(exc, nginx_compat)
                if isinstance(exc, KeygateError)
                else pipeline.internal_error(x.method, x.target)
            )
            x.status = error.status
            keep_alive = self._refuse(error, x)
            self._log(x)
            return True if keep_alive else None
        self._allow(x, judged)
        self._log(x)
        return True

    def _later(self, x: Exchange, judged: Judged, nginx_compat: bool) -> bool:
        self._spawn(x, self._judge(x, judged, nginx_compat))
        return LATER

    async def _judge(self, x: Exchange, judged: Judged, nginx_compat: bool) -> None:
        """The task's road: the key from the store, or the limiter awaited."""
        gw = self._edge.gw
        try:
            principal = judged.principal
            if principal is None:
                principal = await forwardauth.admit(gw, judged)
                x.key_id = principal.key_id
                forwardauth.authorise(gw, judged, self._peer)
                if principal.limits is not None:
                    x.usage = forwardauth.take_now(gw, judged)
            if principal.limits is not None:
                usage = x.usage
                if usage is None:
                    usage = x.usage = await forwardauth.take(gw, judged)
                usage.check()
        except KeygateError as exc:
            raise forwardauth.refusal(exc, nginx_compat) from None
        self._allow(x, judged)

    def _allow(self, x: Exchange, judged: Judged) -> None:
        """200, no body, the four identity headers, no-store, the RateLimit fields."""
        usage = x.usage
        principal = judged.principal
        head, x.keep_alive = self._edge.allowed.head(
            x.version,
            principal.identity if principal is not None else forwardauth.ANONYMOUS,
            lambda: forwardauth.answer_pairs(judged),
            method=x.method,
            keep_alive=x.keep_alive,
            request_id=x.request_id,
            extra=usage.fields if usage is not None and usage.fields else None,
        )
        x.status = 200
        self._write(head)


def start_auth(request: Request, raw_path: str, query: str, edge: Edge) -> tuple[str, str] | None:
    """(tail, request id) when ``request`` is one the edge judges as forward-auth."""
    if not edge.gw.settings.forward_auth.enabled:
        return None
    tail = forwardauth.auth_tail(raw_path, edge.admin_prefix)
    if tail is None:
        return None
    return tail, request_id_or_new(request.headers.get(X_REQUEST_ID), edge.ids)
