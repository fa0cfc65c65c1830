"""What every test builds on. Fixtures stay in the conftest files; they build on these.

Which to use for what:

``polling.wait_for`` — waiting for anything. ``await wait_for(predicate,
within=…, what=…)`` polls a sync or async predicate (every 10 ms by default)
until it is truthy and fails the test, naming ``what``, past ``within``
seconds. Never a bare ``sleep`` to let something happen: wait for the state.

``gateway`` — a real keygate in the test's process. The ``keygate`` /
``keygate_factory`` fixtures (tests/conftest.py) give a :class:`Keygate`: the
real app on a real port through pytest-aiohttp's test server, with its store,
services and a bootstrapped admin; use it with its aiohttp ``client`` for
ordinary requests. ``rig`` / ``rig_factory`` (tests/hardening/conftest.py) give
a :class:`Rig`: the same app served with ``keygate serve``'s runner defaults in
front of a recorder, for hostile clients on raw sockets. ``start_keygate`` with
``started_client`` serves one outside a test's scope (module fixtures, a loop in
another thread); ``make_settings`` and ``default_route`` build what it serves.

``processes`` — ``keygate`` as a separate process. ``run_keygate`` runs a CLI
command to completion; ``start_node`` / ``serve_node`` start ``keygate serve``
and wait for its health check (a :class:`Node` to probe, read and stop);
``keygate_env`` / ``node_env`` are their environments.

``upstreams`` — the recording upstream, the default fake service. A
:class:`Recorder` (fixtures ``upstream``, ``recorder``, ``recorder_factory``)
keeps every request it got as a :class:`Seen` and echoes it as JSON; its
``/_up/`` levers hold, stream, cut, redirect, compress, misbehave or answer
canned responses (the table in its module docstring).

``raw_upstreams`` — upstreams on plain sockets, when the answer's bytes are the
point. ``raw_server(Canned(...))`` answers each request head with bytes of the
test's choosing (or any stream handler: stalls, resets, endless bodies);
:class:`StrictUpstream` parses strictly with llhttp and records every byte of
every connection (the framing invariant, the edge parity test).

``raw`` — the client side on plain sockets, byte for byte. ``http()`` writes a
request exactly as given, ``bearer()`` its credential; :class:`Raw` (or
``connect()``) is one connection that sends bytes and reads each
:class:`Reply` as framed on the wire; ``exchange()`` is one request on a fresh
connection, ``fetch()`` also waits for the server to close it; ``free_port()``
is a port nobody listens on.

``admin`` — the admin API as a client: :class:`AdminApi` calls and their
:class:`ApiReply`, members made through the API.

``stores`` — :class:`CountingStore`, the real SQLite store counting the queries
tests assert about, and ``settle`` for its change feed. ``pg`` — throwaway
databases on the local PostgreSQL (fixtures ``pg_database``, ``pg_url``).

``redis`` — the rate-limit tests' Redis: ``redis_prefix()`` for keys of one's
own on the shared Redis (127.0.0.1:6379, never flushed), and
:class:`PrivateRedis`, a ``redis-server`` on a free port that a test may kill
and start again.

``secrets`` — credentials no log line may carry: ``secret()`` registers one,
``leaks()`` finds them; the hardening suite checks every test's log lines.
"""
