"""The edge's requests: the pipeline's steps, forwarded and answered from callbacks.

A request the edge took (:mod:`.parse`) is served here by the steps of
:mod:`keygate.gateway.pipeline`. A cached key on an idle pooled upstream
connection is forwarded from the two protocols' callbacks alone, with no
task (:meth:`Forwarding._send` / :meth:`Forwarding._on_upstream`); a cache
miss, a new upstream connection, a retry or a streamed answer takes one task
on the road every other request takes too
(:func:`~keygate.gateway.upstream.exchange.open_answer`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Final

from multidict import CIMultiDictProxy

from keygate.gateway import pipeline
from keygate.gateway.auth.cache import Principal
from keygate.gateway.errors import BadPath, KeygateError
from keygate.gateway.http.accesslog import access_message
from keygate.gateway.http.edge.authgate import AuthGate, start_auth
from keygate.gateway.http.edge.parse import Request
from keygate.gateway.http.edge.wire import error_response, response_head
from keygate.gateway.limits.usage import LEGACY, LEGACY_NAMES, Usage
from keygate.gateway.metrics.counts import FORWARD_AUTH, PROXY
from keygate.gateway.pipeline import Resolved
from keygate.gateway.request.headers import X_REQUEST_ID, request_id_or_new
from keygate.gateway.request.pathnorm import normalise_path
from keygate.gateway.upstream.connection import UpstreamConnection, UpstreamError
from keygate.gateway.upstream.exchange import (
    Answer,
    PooledAnswer,
    client_error,
    may_retry,
    open_answer,
)
from keygate.gateway.upstream.flow import WriteFlow
from keygate.gateway.upstream.gate import RouteGate
from keygate.gateway.upstream.head import request_head

if TYPE_CHECKING:
    from keygate.gateway.http.edge.server import Edge

log = logging.getLogger("keygate.edge")

# What _start did with a request.
HAND_OFF: Final = object()  # nothing: the connection goes to aiohttp with it
ANSWERED: Final = object()  # refused at once; the connection stays open
CLOSED: Final = object()  # refused at once; the connection closes
FORWARDING: Final = object()  # forwarded: the answer comes later


class Exchange:
    """One request on the edge, from its head to the end of its answer."""

    __slots__ = (
        "abandoned",
        "answer",
        "body",
        "code",
        "conn",
        "digest",
        "gate",
        "gated",
        "headers",
        "keep_alive",
        "key_id",
        "limits_pending",
        "method",
        "mode",
        "principal",
        "query",
        "request_id",
        "resolved",
        "route",
        "sent",
        "started",
        "status",
        "target",
        "upstream_at",
        "usage",
        "version",
    )

    def __init__(self, request: Request, query: str, request_id: str, started: float) -> None:
        self.method = request.method
        self.target = request.target
        self.query = query
        self.version = request.version
        self.headers: CIMultiDictProxy[str] = request.headers
        self.keep_alive = request.keep_alive
        self.body = request.body
        self.request_id = request_id
        self.started = started
        self.resolved: Resolved | None = None
        self.route: str | None = None
        self.gate: RouteGate | None = None
        self.gated = False  # counted in the gate's in_flight
        self.digest = b""
        self.principal: Principal | None = None
        self.key_id: str | None = None
        self.conn: UpstreamConnection | None = None  # the callback road's connection
        self.answer: Answer | None = None  # its response head, once read
        self.status = 500
        self.sent = False  # any byte of the answer written
        self.abandoned = False  # the client left before the answer
        self.usage: Usage | None = None  # a counted request's RateLimit fields
        self.limits_pending = False  # the limiter must be awaited (the task's road)
        self.code: str | None = None  # keygate's refusal code (metrics)
        self.mode = PROXY  # or FORWARD_AUTH (metrics)
        self.upstream_at = 0.0  # loop time the request went upstream


class Forwarding(AuthGate, WriteFlow):
    """The request half of :class:`~keygate.gateway.http.edge.protocol.EdgeProtocol`:
    the request in flight, and the task forwarding it unless upstream
    callbacks drive it."""

    __slots__ = ("_current", "task")
    _edge: Edge
    _peer: str
    _proto: str
    _transport: asyncio.Transport | None

    def __init__(self) -> None:
        super().__init__()
        # At most one request in flight: pipelined ones wait in the buffer.
        self._current: Exchange | None = None
        self.task: asyncio.Task[None] | None = None

    if TYPE_CHECKING:  # the connection half's (EdgeProtocol)

        def _write(self, data: bytes) -> None: ...
        def _refuse(self, exc: KeygateError, x: Exchange) -> bool: ...
        def _done(self, keep_alive: bool) -> None: ...
        def _log(self, x: Exchange) -> None: ...
        def flush(self) -> None: ...
        def abort(self) -> None: ...
        async def _drained(self) -> None: ...

    def _start(self, request: Request) -> object:
        """Serve one request: answered at once, forwarded, or aiohttp's."""
        edge = self._edge
        gw = edge.gw
        method, target, headers = request.method, request.target, request.headers
        raw_path, _, query = target.partition("?")
        if raw_path.startswith(edge.auth_path):
            auth = start_auth(request, raw_path, query, edge)
            if auth is not None:  # forward-auth: judged here as on aiohttp's side
                tail, request_id = auth
                x = Exchange(request, query, request_id, edge.loop.time())
                x.mode = FORWARD_AUTH
                done = self._forward_auth(request, x, tail)
                if done is None:
                    return CLOSED
                return ANSWERED if done else FORWARDING
        try:
            path = normalise_path(raw_path)
        except BadPath:
            return HAND_OFF  # aiohttp routes it first (it may be an admin path)
        if pipeline.admin_bound(raw_path, path, edge.admin_prefix):
            return HAND_OFF  # the admin app's, and so are tricks aimed into its prefix
        request_id = request_id_or_new(headers.get(X_REQUEST_ID), edge.ids)
        x = Exchange(request, query, request_id, edge.loop.time())
        try:
            x.resolved = resolved = pipeline.resolve(gw, headers, path, query, self._proto)
            x.route = resolved.route.name
            gate = x.gate = resolved.gate
            if gate.origin is None:
                return HAND_OFF  # an https upstream: aiohttp's client speaks TLS
            x.digest, principal = pipeline.admit_cached(gw, resolved)
            if principal is not None:
                x.limits_pending = self._admitted(x, principal)
            elif resolved.credential is None:
                pipeline.check_room(resolved.route, gate, len(x.body) or None)
            # A miss is checked after its lookup, on the task's road.
        except Exception as exc:
            if isinstance(exc, KeygateError):
                error = exc
                if x.route is None:
                    x.route = pipeline.route_name(gw, path)
            else:
                error = pipeline.internal_error(method, target)
            x.status = error.status
            keep_alive = self._refuse(error, x)
            self._log(x)
            return ANSWERED if keep_alive else CLOSED
        self._current = x
        edge.busy += 1
        if x.limits_pending:  # a cached key whose limiter must be asked (Redis)
            x.limits_pending = False
            assert x.principal is not None
            pipeline.take_later(gw, x.principal).add_done_callback(
                lambda done: self._limited(x, done)
            )
            return FORWARDING
        if x.principal is not None or resolved.credential is None:
            conn = edge.pool.take(gate.origin.key)
            if conn is not None:
                self._send(x, conn)
                return FORWARDING
        self.task = edge.loop.create_task(self._run(x, self._forward(x)))
        return FORWARDING

    def _spawn(self, x: Exchange, work: Coroutine[None, None, None]) -> None:
        """Serve ``x`` on this connection's task (a forward-auth judgement that must wait)."""
        edge = self._edge
        self._current = x
        edge.busy += 1
        self.task = edge.loop.create_task(self._run(x, work))

    def _admitted(self, x: Exchange, principal: Principal) -> bool:
        """The key is verified: its address, the rules, the form-body check, the
        room, its rate limits and quota. True: the limiter must be awaited."""
        resolved = x.resolved
        assert resolved is not None and x.gate is not None
        gw = self._edge.gw
        x.principal = principal
        x.key_id = principal.key_id
        body = x.body
        check = pipeline.authorise(
            gw, resolved, principal, x.method, x.headers, x.query, bool(body), peer=self._peer
        )
        if check is not None:
            check.whole(body)  # the whole body is here: checked before anything is sent
        pipeline.check_room(resolved.route, x.gate, len(body) or None)
        if principal.limits is None:
            return False
        usage = x.usage = pipeline.take_now(gw, principal)
        if usage is None:
            return True
        usage.check()
        return False

    def _limited(self, x: Exchange, done: asyncio.Future[Usage]) -> None:
        """The limiter answered for a cached key: refuse, or forward as _start would."""
        if self._current is not x:
            return  # the client left meanwhile
        edge = self._edge
        gate = x.gate
        assert gate is not None and gate.origin is not None
        try:
            assert x.principal is not None
            usage = x.usage = pipeline.counted(edge.gw, x.principal, done.result())
            usage.check()
            conn = edge.pool.take(gate.origin.key)
            if conn is None:
                self.task = edge.loop.create_task(self._run(x, self._forward(x)))
                return
            self._send(x, conn)
            return
        except KeygateError as exc:
            self._failed(x, exc)
        except Exception:
            self._failed(x, pipeline.internal_error(x.method, x.target))
        self._finish(x)

    # -- forwarding ----------------------------------------------------------------
    def _upstream_pairs(self, x: Exchange) -> list[tuple[str, str]]:
        assert x.resolved is not None
        return pipeline.upstream_pairs(
            self._edge.gw,
            x.resolved,
            x.headers,
            x.principal.identity if x.principal is not None else None,
            client_ip=self._peer,
            proto=self._proto,
            request_id=x.request_id,
        )

    def _send(self, x: Exchange, conn: UpstreamConnection) -> None:
        """Forward on an idle pooled connection, driven by its callbacks (no task).

        The head goes out with the loop pass's other writes; a connection
        found closed by then fails stale with nothing sent, and the request
        goes once more on a fresh one (``may_retry``), whatever its method.
        """
        gate, resolved = x.gate, x.resolved
        assert gate is not None and gate.origin is not None and resolved is not None
        target = pipeline.upstream_target(self._edge.gw, resolved)
        body = x.body
        pairs = self._upstream_pairs(x)
        head = request_head(x.method, target, gate.origin.host, pairs, len(body) or None)
        if body:
            head += body
        self._gate_in(x)
        x.conn = conn
        x.upstream_at = now = self._edge.loop.time()
        deadline = now + resolved.route.timeout
        conn.start(head, deadline, x.method == "HEAD", self._on_upstream, send=False)
        self._edge.queue_upstream(conn, head)

    def _on_upstream(self) -> None:
        """Progress on the upstream exchange of a callback-driven request."""
        x = self._current
        if x is None or x.conn is None:
            return
        conn = x.conn
        try:
            if conn.error is not None:
                error = conn.error
                conn.abort()
                x.conn = None
                if isinstance(error, UpstreamError) and may_retry(
                    error, x.method, reused=True, sent=conn.sent
                ):
                    # The keep-alive race (RFC 9112 §9.3.1): once more, on a
                    # fresh connection, by the task's road.
                    self._gate_out(x)
                    self.task = self._edge.loop.create_task(
                        self._run(x, self._forward(x, fresh=True))
                    )
                    return
                self._failed(x, client_error(error))
                self._finish(x)
                return
            if not conn.head_done:
                return
            answer = x.answer
            if answer is None:
                answer = x.answer = PooledAnswer(conn, x.method, None, None)
                x.status = answer.status
                self._upstream_time(x)
            data = answer.whole_body()
            if data is None:
                # Not all here: the head goes now, the body as it comes.
                conn.listener = None
                self.task = self._edge.loop.create_task(self._run(x, self._relay(x, answer)))
                return
            self._answer_whole(x, answer, data)
        except KeygateError as exc:
            self._failed(x, exc)
        except Exception:
            self._failed(x, pipeline.internal_error(x.method, x.target))
        self._finish(x)

    def _upstream_time(self, x: Exchange) -> None:
        counts = self._edge.gw.metrics
        if counts is not None and x.route is not None:
            counts.upstream_time(x.route, self._edge.loop.time() - x.upstream_at)

    def _answer_whole(self, x: Exchange, answer: Answer, data: bytes) -> None:
        answer.close()
        x.conn = None
        head, _ = self._answer_head(x, answer, len(data))
        self._write(head + data if data and not answer.bodiless else head)

    def _answer_head(
        self, x: Exchange, answer: Answer, body_length: int | None
    ) -> tuple[bytes, bool]:
        """The upstream's answer head for the client, and whether it goes chunked;
        ``x.keep_alive`` becomes whether the connection stays open after it."""
        headers = answer.headers
        usage = x.usage
        extra = None
        if usage is not None and usage.fields:
            extra = usage.fields
            if self._edge.gw.limiter.mode in LEGACY:  # ours replace an upstream's
                headers = [(n, v) for n, v in headers if n.lower() not in LEGACY_NAMES]
        head, chunked, x.keep_alive = response_head(
            x.version,
            answer.status,
            answer.reason,
            headers,
            method=x.method,
            body_length=body_length,
            keep_alive=x.keep_alive,
            request_id=x.request_id,
            extra=extra,
        )
        return head, chunked

    async def _run(self, x: Exchange, work: Coroutine[None, None, None]) -> None:
        """Run a forwarding step as this connection's task; every ending is answered."""
        try:
            try:
                await work
            except KeygateError as exc:
                self._failed(x, exc)
        except asyncio.CancelledError:
            x.keep_alive = False  # the client left
            raise
        except Exception:
            self._failed(x, pipeline.internal_error(x.method, x.target))
        finally:
            work.close()  # never started if cancelled at once
            self.task = None
            self._finish(x)

    async def _forward(self, x: Exchange, *, fresh: bool = False) -> None:
        """The task's road: a cache miss, a new upstream connection, or a retry."""
        edge = self._edge
        gw = edge.gw
        resolved, gate = x.resolved, x.gate
        assert resolved is not None and gate is not None and gate.origin is not None
        if resolved.credential is not None and x.principal is None:
            x.limits_pending = self._admitted(x, await pipeline.admit(gw, resolved, x.digest))
        if x.limits_pending:
            assert x.principal is not None
            x.limits_pending = False
            usage = x.usage = await pipeline.take(gw, x.principal)
            usage.check()
        self._gate_in(x)
        x.upstream_at = now = edge.loop.time()
        deadline = now + resolved.route.timeout
        target = pipeline.upstream_target(gw, resolved)
        pairs = self._upstream_pairs(x)
        answer = x.answer = await open_answer(
            edge.pool, gate.origin, x.method, target, pairs, x.body, deadline, fresh=fresh
        )
        x.status = answer.status
        self._upstream_time(x)
        data = answer.whole_body()
        if data is not None:
            self._answer_whole(x, answer, data)
            return
        await self._relay(x, answer)

    async def _relay(self, x: Exchange, answer: Answer) -> None:
        """Stream the answer: the head now, the body as it comes."""
        transport = self._transport
        assert transport is not None
        head, chunked = self._answer_head(x, answer, None)
        x.sent = True
        self._write(head)
        self.flush()  # the body follows straight on the transport
        async for chunk in answer.chunks():
            if transport.is_closing():
                x.keep_alive = False
                return  # the client is gone; _finish drops the upstream
            transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            if self._write_paused:
                await self._drained()
        answer.close()
        x.conn = None
        if chunked:
            self._write(b"0\r\n\r\n")

    def _gate_in(self, x: Exchange) -> None:
        """Take the route slot (UpstreamBusy when full): the request is authorised."""
        assert x.gate is not None
        x.gate.__enter__()
        x.gated = True
        self._edge.authorised += 1

    def _gate_out(self, x: Exchange) -> None:
        if x.gated:
            assert x.gate is not None
            x.gated = False
            x.gate.__exit__()
            self._edge.authorised -= 1

    def _failed(self, x: Exchange, exc: KeygateError) -> None:
        x.status = exc.status
        x.code = exc.code
        if x.sent:
            # Mid-answer: cut the connection, so the message ends short of its
            # length or final chunk instead of looking complete.
            x.keep_alive = False
            self.abort()
        else:
            x.keep_alive = self._refuse(exc, x)

    def _finish(self, x: Exchange) -> None:
        """The exchange ended, however: release what it held, log it, go on."""
        if self._current is not x:
            return  # finished already (the client left)
        self._current = None
        answer, x.answer = x.answer, None
        if answer is not None:
            answer.close()  # kept for reuse only when read to its end
        conn = x.conn
        if conn is not None:
            x.conn = None
            if conn.active:
                conn.abort()  # not read to its end: never reused
        self._gate_out(x)
        edge = self._edge
        edge.busy -= 1
        if not x.abandoned:
            self._log(x)
        if edge.closing and edge.busy == 0:
            edge.drained()
        self._done(x.keep_alive)

    def _refusal(self, exc: KeygateError, x: Exchange) -> tuple[bytes, bool]:
        """The JSON error as a whole answer, and whether the connection stays open."""
        usage = x.usage
        return error_response(
            exc,
            version=x.version,
            method=x.method,
            keep_alive=x.keep_alive and not exc.closes_connection,
            request_id=x.request_id,
            extra=usage.fields if usage is not None else None,
        )

    def _access_line(self, x: Exchange) -> str:
        elapsed = self._edge.loop.time() - x.started
        return access_message(
            x.method, x.target, x.status, elapsed, x.key_id, x.route, x.request_id
        )
