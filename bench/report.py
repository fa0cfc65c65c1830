"""Aggregate the runs of all rounds and print them as markdown tables."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from .scenarios import Scenario
from .systems import DESCRIPTIONS
from .wrkrun import WrkResult


@dataclass(frozen=True)
class Sample:
    """One run: one scenario against one system in one round."""

    scenario: str
    system: str
    round: int
    results: tuple[WrkResult, ...]  # one per load of the scenario
    cpu_s: float  # utime + stime of the system's process tree during the run
    rss_mib: float  # VmRSS of the tree right after the run

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.results)

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s * 1e6 / self.requests if self.requests else float("nan")


def _med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _rps(samples: Sequence[Sample], part: int) -> list[float]:
    return [s.results[part].rps for s in samples]


def _fmt_rps(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:,.0f}"
    return f"{_med(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "n/a"


def scenario_table(sc: Scenario, samples: Sequence[Sample]) -> list[str]:
    by_system = {name: [s for s in samples if s.system == name] for name in sc.systems}
    subject = by_system.get(sc.subject, [])
    out = [
        f"### {sc.name}: {sc.title}",
        "",
        f"| system | req/s median (min–max) | p50 ms | p99 ms | CPU µs/req | non-2xx "
        f"| RSS MiB | {sc.subject} ÷ this: req/s · CPU/req |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in sc.systems:
        runs = by_system[name]
        if not runs:
            continue
        cpu = _med([s.cpu_us_per_request for s in runs])
        for part, label in enumerate(sc.parts):
            rps = _rps(runs, part)
            total = sum(s.results[part].requests for s in runs)
            bad = sum(s.results[part].non2xx for s in runs)
            errors = sum(s.results[part].socket_errors for s in runs)
            non2xx = f"{100 * bad / total:.0f}%" if total else "n/a"
            if errors:
                non2xx += f" ({errors} socket errors)"
            if name == sc.subject or not subject:
                ratio = "—"
            else:
                subj_cpu = _med([s.cpu_us_per_request for s in subject])
                ratio = f"{_ratio(_med(_rps(subject, part)), _med(rps))} · {_ratio(subj_cpu, cpu)}"
            system = f"{name} ({label})" if label else name
            out.append(
                f"| {system} | {_fmt_rps(rps)} "
                f"| {_med([s.results[part].p50_ms for s in runs]):.2f} "
                f"| {_med([s.results[part].p99_ms for s in runs]):.2f} "
                f"| {cpu:,.0f} | {non2xx} | {runs[-1].rss_mib:,.0f} | {ratio} |"
            )
    return [*out, ""]


def goal_notes(samples: Sequence[Sample], conns: int) -> list[str]:
    """The two ratios issue 13 sets goals for, from the same run's medians."""

    def med(scenario: str, system: str, what: str) -> float | None:
        runs = [s for s in samples if s.scenario == scenario and s.system == system]
        if not runs:
            return None
        if what == "rps":
            return _med([s.results[0].rps for s in runs])
        return _med([s.cpu_us_per_request for s in runs])

    notes = []
    fa = f"forward-auth-c{conns}"
    proxy_cpu, auth_cpu = med(fa, "keygate", "cpu"), med(fa, "nginx-authreq", "cpu")
    proxy_rps, auth_rps = med(fa, "keygate", "rps"), med(fa, "nginx-authreq", "rps")
    if proxy_cpu and auth_cpu and proxy_rps and auth_rps:
        notes.append(
            f"- forward-auth ({fa}): nginx-authreq ÷ keygate proxy mode = "
            f"{auth_rps / proxy_rps:.2f}× req/s, {proxy_cpu / auth_cpu:.2f}× requests per "
            "keygate core (keygate's CPU µs/req in proxy mode ÷ in forward-auth; goal ≥ 1.5×)"
        )
    two_cpu, two_rps = med(fa, "nginx2-authreq", "cpu"), med(fa, "nginx2-authreq", "rps")
    if proxy_cpu and two_cpu and proxy_rps and two_rps:
        notes.append(
            f"- forward-auth, nginx on both cores ({fa}): nginx2-authreq ÷ keygate proxy mode = "
            f"{two_rps / proxy_rps:.2f}× req/s, "
            f"{proxy_cpu / two_cpu:.2f}× requests per keygate core"
        )
    valid = f"valid-c{conns}"
    on, off = med(valid, "keygate", "rps"), med(valid, "keygate-nometrics", "rps")
    on_cpu, off_cpu = med(valid, "keygate", "cpu"), med(valid, "keygate-nometrics", "cpu")
    if on and off and on_cpu and off_cpu:
        notes.append(
            f"- metrics ({valid}): keygate (metrics on) ÷ keygate-nometrics = {on / off:.2f}× "
            f"req/s, {off_cpu / on_cpu:.2f}× requests per core (goal ≥ 0.97×)"
        )
    return notes


def render(
    scenarios: Sequence[Scenario],
    samples: Sequence[Sample],
    startup: dict[str, float],
    header: Sequence[str],
    notes: Sequence[str] = (),
) -> str:
    lines = [*header, ""]
    for sc in scenarios:
        lines += scenario_table(sc, [s for s in samples if s.scenario == sc.name])
    lines += ["### Systems: start-up (spawn → first answer) and memory after the last run", ""]
    lines += ["| system | what | start-up s | VmRSS MiB |", "|---|---|---:|---:|"]
    for name, seconds in startup.items():
        last = [s for s in samples if s.system == name]
        rss = f"{last[-1].rss_mib:,.0f}" if last else "n/a"
        lines.append(f"| {name} | {DESCRIPTIONS[name]} | {seconds:.2f} | {rss} |")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"
