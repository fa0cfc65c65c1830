"""Traffic notices: a key refused for its address, its rate limits or its quota.

The pipeline calls ``Gateway.notice(event, key_id)`` on each such refusal, at
most once per request and never on an allowed one. A running server's
listener is ``gateway/webhooks/traffic.py`` (webhook events
``key.rate_limited``, ``key.quota_exceeded``, ``key.ip_denied``, at most once
per cooldown); :func:`no_notice` is the listener before it starts and after
it stops. A listener must return at once (the request waits for it) and
never raise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

IP_DENIED: Final = "key.ip_denied"
RATE_LIMITED: Final = "key.rate_limited"
QUOTA_EXCEEDED: Final = "key.quota_exceeded"

TrafficNotice = Callable[[str, str], None]  # (event, key id)


def no_notice(event: str, key_id: str) -> None:
    """The default listener: nothing is sent anywhere."""
