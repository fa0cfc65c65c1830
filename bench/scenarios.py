"""Scenarios: what wrk sends, and to which systems (keygate and its references)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .wrkrun import Load

PROXIES = ["direct", "nginx", "nginx-map", "bare"]
CHECKERS = ["nginx-map", "bare"]  # references that check a key as well
# miss-1m's offered load: a third of what one worker serves when every request misses.
MISS_RATE = 2_000


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    loads: tuple[Load, ...]  # two loads run concurrently (the mixed scenario)
    systems: tuple[str, ...]  # references first
    subject: str = "keygate"  # the keygate every other row is compared with
    parts: tuple[str, ...] = ("",)  # one label per load


@dataclass(frozen=True)
class Tokens:
    valid: str  # the small store's key
    bad_checksum: str
    flood_ids: Path  # well-formed tokens with random key ids
    flood_secrets: Path  # the valid key's id with wrong secrets
    flood_foreign: Path  # credentials in other services' formats
    zipf_sample: Path  # tokens of the large store, rank order


def build(t: Tokens, conns: int) -> list[Scenario]:
    half = max(1, conns // 2)
    return [
        Scenario("valid-c1", "valid cached key, 1 connection",
                 (Load("static", t.valid, 1),), (*PROXIES, "hello", "keygate", "keygate-poll")),
        Scenario(f"valid-c{conns}", f"valid cached key, {conns} connections",
                 (Load("static", t.valid, conns),),
                 (*PROXIES, "hello", "keygate", "keygate-nolog", "keygate-nofast",
                  "keygate-w2", "keygate-limited", "keygate-redis", "keygate-nometrics",
                  "keygate-webhooks", "keygate-poll")),
        Scenario(f"forward-auth-c{conns}",
                 f"valid cached key, {conns} connections: nginx auth_request → keygate /auth "
                 "→ origin, next to nginx alone and keygate's proxy mode",
                 (Load("static", t.valid, conns),),
                 ("nginx", "keygate", "nginx-authreq", "nginx2-authreq")),
        Scenario("bad-checksum", "flood: one token with a wrong checksum",
                 (Load("static", t.bad_checksum, conns),), (*CHECKERS, "hello", "keygate")),
        Scenario("flood-random-id", "flood: valid checksums, random key ids (refused from memory)",
                 (Load("cycle", str(t.flood_ids), conns),), (*CHECKERS, "hello", "keygate")),
        Scenario("flood-wrong-secret", "flood: the real key id, wrong secrets",
                 (Load("cycle", str(t.flood_secrets), conns),), (*CHECKERS, "hello", "keygate")),
        Scenario("flood-foreign", "flood: random tokens of other formats (refused from memory)",
                 (Load("cycle", str(t.flood_foreign), conns),),
                 (*CHECKERS, "hello", "keygate", "keygate-imported"), subject="keygate-imported"),
        Scenario("features-on", f"valid key, every feature on, {conns} connections",
                 (Load("static", t.valid, conns),),
                 ("nginx", "bare", "keygate", "keygate-limited", "keygate-features"),
                 subject="keygate-features"),
        Scenario(f"valid-c{half}", f"valid key alone, {half} connections (mixed's valid load)",
                 (Load("static", t.valid, half),), ("bare", "keygate")),
        Scenario("mixed", f"{half} valid + {half} random-id flood connections at once",
                 (Load("static", t.valid, half), Load("cycle", str(t.flood_ids), half)),
                 (*CHECKERS, "keygate"), parts=("valid", "flood")),
        Scenario("zipf-1m", "1,000,000 keys, cache 100,000, Zipf(s=1) over 200,000 keys",
                 (Load("zipf", str(t.zipf_sample), conns),),
                 (*CHECKERS, "keygate-1m", "keygate-1m-thread", "keygate-1m-pg"),
                 subject="keygate-1m"),
        Scenario("miss-1m", f"1,000,000 keys, cache 100,000, every request a cache miss "
                 f"(the 200,000 sampled keys in turn), {conns} connections paced to "
                 f"{MISS_RATE:,} req/s: a miss's own latency, not a saturated queue's",
                 (Load("paced", str(t.zipf_sample), conns, rate=MISS_RATE),),
                 (*CHECKERS, "keygate-1m", "keygate-1m-thread", "keygate-1m-pg"),
                 subject="keygate-1m"),
        Scenario(f"post-c{conns}", f"valid cached key, 1 KiB JSON POST, {conns} connections",
                 (Load("static", t.valid, conns, body=1024),), (*PROXIES, "keygate")),
        Scenario("stream-1mib", "valid key, 1 MiB streamed response, 10 connections",
                 (Load("static", t.valid, 10, path="/big"),), (*PROXIES, "keygate")),
        Scenario(f"tls-c{conns}", f"valid cached key over TLS (keep-alive), {conns} connections",
                 (Load("static", t.valid, conns),),
                 ("nginx-tls", "keygate", "keygate-tls", "keygate-tls-nofast"),
                 subject="keygate-tls"),
    ]
