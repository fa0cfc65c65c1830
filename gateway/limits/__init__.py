"""Per-key rate limits, quotas and IP allowlists.

The contract: docs/reference.md#rate-limits-quotas-and-ip-allowlists.

- ``rules.py`` — a key's limits as the hot path reads them, parsed once (pure);
- ``gcra.py`` and ``windows.py`` — the arithmetic: GCRA, UTC quota windows (pure);
- ``usage.py`` — one request's outcome, its 429s and its header fields (pure);
- ``local.py`` and ``redis.py`` — the two backends behind one ``Limiter``.
"""
