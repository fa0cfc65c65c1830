"""A key's limits as every request reads them: parsed once, when the key is cached.

:class:`KeyLimits` is what a cached key (``auth/cache.py`` ``Principal.limits``)
carries when it has rate limits, a quota or allowed IPs; a key with none of
them carries ``None``, so it costs the hot path one attribute test. The
allowed networks are compiled to integers per prefix length, so a check is
one shift and one set lookup per distinct prefix length, not one
comparison per network.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from keygate.gateway.limits import windows

# The name of the quota in RateLimit fields and violated_policies; no rate
# limit may take it (docs/reference.md#rate-limits).
QUOTA_POLICY = "quota"
MAX_POLICIES = 5
MAX_ALLOWED_IPS = 100

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Policy:
    """One rate limit: ``limit`` requests per ``window`` seconds, ``burst`` at once."""

    name: str
    limit: int
    window: int
    burst: int
    interval: float  # GCRA's T: seconds between two requests at the steady rate
    tolerance: float  # GCRA's tau: burst * T
    policy_item: str  # its RateLimit-Policy list member, written once
    room_head: str  # its RateLimit list member up to r's value

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> Policy:
        limit, window = int(raw["limit"]), int(raw["window"])
        burst = int(raw.get("burst") or limit)
        interval = window / limit
        name = str(raw["name"])
        return cls(
            name,
            limit,
            window,
            burst,
            interval,
            burst * interval,
            f'"{name}";q={limit};w={window}',
            f'"{name}";r=',
        )


@dataclass(frozen=True, slots=True)
class Quota:
    limit: int
    period: str  # day | month


class Allowlist:
    """Networks a key may be used from, matched by integer prefixes."""

    __slots__ = ("_v4", "_v6")

    def __init__(self, networks: Iterable[Network]) -> None:
        # prefix length -> network addresses shifted right to that length
        v4: dict[int, set[int]] = {}
        v6: dict[int, set[int]] = {}
        for net in networks:
            table, bits = (v4, 32) if net.version == 4 else (v6, 128)
            table.setdefault(net.prefixlen, set()).add(
                int(net.network_address) >> (bits - net.prefixlen)
            )
        self._v4 = tuple((32 - plen, frozenset(s)) for plen, s in sorted(v4.items()))
        self._v6 = tuple((128 - plen, frozenset(s)) for plen, s in sorted(v6.items()))

    def allows(self, address: Address) -> bool:
        table = self._v4 if address.version == 4 else self._v6
        value = int(address)
        return any(value >> shift in prefixes for shift, prefixes in table)


def parse_network(text: str) -> Network:
    """An address or CIDR as a network, host bits masked and an IPv4-mapped IPv6
    network as the IPv4 one it stands for; ValueError when it is neither."""
    text = text.strip()
    if "/" not in text and "%" in text:
        raise ValueError(text)  # a zone is not a place on the Internet
    net = ipaddress.ip_network(text, strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            net = ipaddress.IPv4Network(f"{mapped}/{net.prefixlen - 96}")
    return net


def normalise_networks(values: Sequence[str]) -> list[str]:
    """The stored form of ``allowed_ips``: each network once, in address order."""
    nets = {parse_network(v) for v in values}
    ordered = sorted(nets, key=lambda n: (n.version, int(n.network_address), n.prefixlen))
    return [str(n) for n in ordered]


@dataclass(frozen=True, slots=True, eq=False)
class KeyLimits:
    """Everything about one key's limits that a request needs."""

    key_id: str
    policies: tuple[Policy, ...]
    quota: Quota | None
    allowlist: Allowlist | None  # None: any address
    # The store's count for the quota window it names, when the key was read.
    quota_used: int
    quota_window: str | None
    # A static part of the RateLimit-Policy field (the rate limits'; the
    # quota's ``w`` follows the calendar).
    policy_field: str

    @property
    def counted(self) -> bool:
        """Whether requests are counted: some rate limit or a quota."""
        return bool(self.policies) or self.quota is not None

    def quota_item(self, now: float) -> str:
        assert self.quota is not None
        return f'"{QUOTA_POLICY}";q={self.quota.limit};w={windows.length(self.quota.period, now)}'


def key_limits(
    key_id: str,
    rate_limits: Sequence[Mapping[str, Any]],
    quota: Mapping[str, Any] | None,
    allowed_ips: Sequence[str],
    quota_used: int = 0,
    quota_window: str | None = None,
) -> KeyLimits | None:
    """A key's limits as stored, compiled; None when it has none at all."""
    if not rate_limits and quota is None and not allowed_ips:
        return None
    policies = tuple(Policy.of(p) for p in rate_limits)
    allowlist = Allowlist(parse_network(v) for v in allowed_ips) if allowed_ips else None
    return KeyLimits(
        key_id=key_id,
        policies=policies,
        quota=Quota(int(quota["limit"]), str(quota["period"])) if quota is not None else None,
        allowlist=allowlist,
        quota_used=quota_used,
        quota_window=quota_window,
        policy_field=", ".join(p.policy_item for p in policies),
    )
