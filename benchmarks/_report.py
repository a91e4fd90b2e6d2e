"""The report: Markdown tables of the medians with min-max, ratios, and the targets checked."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._suite import Scenario

__all__ = ["TARGETS", "render"]

# (scenario, client, baseline, bound, "min" or "max", aim only): the targets, as ratios of medians.
TARGETS: list[tuple[str, str, str, float, str, bool]] = [
    ("async-c64", "nebula_async", "aiohttp", 0.85, "min", False),
    ("async-c256", "nebula_async", "aiohttp", 0.85, "min", False),
    ("stream-1x10000", "nebula_async", "aiohttp", 1.0, "min", False),
    ("stream-1x10000", "nebula_async", "aiohttp iter_any", 0.8, "min", True),
    ("stream-64x100", "nebula_async", "aiohttp", 1.0, "min", False),
    ("stream-64x100", "nebula_async", "aiohttp iter_any", 0.8, "min", True),
    ("sync-seq", "nebula_sync", "httpx", 1.0, "min", False),
    ("sync-8", "nebula_sync", "httpx", 1.5, "min", False),
    ("sync-stream", "nebula_sync", "httpx", 0.6, "min", False),
    ("rss", "nebula_async", "aiohttp", 1.3, "max", False),
]
IMPORT_LIMITS_MS = {"nebula_async": 100.0, "nebula_sync": 150.0}
IMPORT_RATIOS = {"nebula_async": 0.4, "nebula_sync": 0.5}  # at most this many times `import aiohttp`


def _rate(result: dict[str, Any], unit: str) -> float:
    done = result["events"] if unit == "events/s" else result["calls"]
    return float(done) / float(result["elapsed"])


def _spread(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}–{fmt(max(values))})"


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _medians(scenario: Scenario) -> dict[str, float]:
    return {
        name: statistics.median(_rate(r, scenario.unit) for r in runs)
        for name, runs in scenario.results.items()
    }


def _scenario_table(scenario: Scenario) -> list[str]:
    floor = scenario.floor or ("aiohttp" if scenario.kind == "async" else "httpx")
    medians = _medians(scenario)
    per = "event" if scenario.unit == "events/s" else "call"
    extra_floor = "aiohttp iter_any" if "aiohttp iter_any" in medians else None
    head = f"| client | {scenario.unit} | × {floor} |"
    rule = "|---|---:|---:|"
    if extra_floor:
        head += " × iter_any |"
        rule += "---:|"
    head += f" × openai | p50 ms | p99 ms | client CPU µs/{per} | server CPU |"
    rule += "---:|---:|---:|---:|---:|"
    lines = [f"### {scenario.title}", "", head, rule]
    for name in scenario.clients:
        runs = scenario.results.get(name)
        if not runs:
            if name in scenario.skipped:
                lines.append(f"| {name} | skipped: {scenario.skipped[name]} |")
            continue
        rates = [_rate(r, scenario.unit) for r in runs]
        mine = medians[name]
        row = f"| {'**' + name + '**' if name.startswith('nebula') else name} | {_spread(rates, _n)} |"
        row += f" {_ratio(mine / medians[floor] if floor in medians else None)} |"
        if extra_floor:
            row += f" {_ratio(mine / medians[extra_floor])} |"
        row += f" {_ratio(mine / medians['openai'] if 'openai' in medians else None)} |"
        p50 = statistics.median(r["p50_ms"] for r in runs)
        p99 = statistics.median(r["p99_ms"] for r in runs)
        done_key = "events" if scenario.unit == "events/s" else "calls"
        cpu = statistics.median(r["cpu"] / max(r[done_key], 1) * 1e6 for r in runs)
        server = max(r["server_cpu"] for r in runs)
        row += f" {p50:.2f} | {p99:.2f} | {cpu:.1f} | {server:.0%} |"
        lines.append(row)
    return [*lines, ""]


def _rss_table(rss: dict[str, list[dict[str, Any]]]) -> list[str]:
    if not rss:
        return []
    lines = [
        "### Peak RSS growth, 1,000 calls in flight",
        "",
        "| client | MiB | × aiohttp | × openai | all 1,000 answered in (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    med = {name: statistics.median(r["rss_kib"] for r in runs) for name, runs in rss.items()}
    for name, runs in rss.items():
        mib = [r["rss_kib"] / 1024 for r in runs]
        to_aiohttp = med[name] / med["aiohttp"] if med.get("aiohttp") else None
        to_openai = med[name] / med["openai"] if med.get("openai") else None
        took = statistics.median(r["elapsed"] for r in runs)
        label = f"**{name}**" if name.startswith("nebula") else name
        lines.append(
            f"| {label} | {_spread(mib, lambda v: f'{v:.1f}')} | {_ratio(to_aiohttp)} | {_ratio(to_openai)} "
            f"| {took:.2f} |"
        )
    return [*lines, ""]


def _import_table(imports: dict[str, list[float]]) -> list[str]:
    if not imports:
        return []
    lines = [
        "### Import time (over bare `python -c pass`)",
        "",
        "| module | ms | × aiohttp |",
        "|---|---:|---:|",
    ]
    medians = {module: statistics.median(values) for module, values in imports.items()}
    for module, values in imports.items():
        label = f"**{module}**" if module.startswith("nebula") else module
        ratio = medians[module] / medians["aiohttp"] if medians.get("aiohttp") else None
        lines.append(f"| {label} | {_spread(values, lambda v: f'{v:.0f}')} | {_ratio(ratio)} |")
    return [*lines, ""]


def _targets(
    scenarios: Sequence[Scenario], rss: dict[str, list[dict[str, Any]]], imports: dict[str, list[float]]
) -> list[str]:
    by_key = {s.key: _medians(s) for s in scenarios}
    if rss:
        by_key["rss"] = {name: statistics.median(r["rss_kib"] for r in runs) for name, runs in rss.items()}
    lines = ["| scenario | target | measured | |", "|---|---|---:|---|"]
    for key, client, base, bound, kind, aim in TARGETS:
        values = by_key.get(key)
        if not values or client not in values or base not in values:
            continue
        ratio = values[client] / values[base]
        met = ratio >= bound if kind == "min" else ratio <= bound
        sign = "≥" if kind == "min" else "≤"
        verdict = ("met" if met else "**not met**") + (" (aim)" if aim else "")
        lines.append(f"| {key} | {client} {sign} {bound:g} × {base} | {ratio:.2f}× | {verdict} |")
    for module, limit in IMPORT_LIMITS_MS.items():
        if module in imports:
            ms = statistics.median(imports[module])
            verdict = "met" if ms <= limit else "**not met**"
            lines.append(f"| import | {module} ≤ {limit:g} ms | {ms:.0f} ms | {verdict} |")
    for module, bound in IMPORT_RATIOS.items():
        if module in imports and imports.get("aiohttp"):
            ratio = statistics.median(imports[module]) / statistics.median(imports["aiohttp"])
            verdict = "met" if ratio <= bound else "**not met**"
            lines.append(f"| import | {module} ≤ {bound:g} × aiohttp | {ratio:.2f}× | {verdict} |")
    return [*lines, ""]


def render(
    scenarios: Sequence[Scenario],
    rss: dict[str, list[dict[str, Any]]],
    imports: dict[str, list[float]],
    header: dict[str, Any],
) -> str:
    """The whole report as Markdown."""
    versions = ", ".join(f"{k} {v}" for k, v in header["versions"].items())
    placement = (
        "server pinned to CPU 0, clients to CPU 1" if header["pinned"] else "not pinned (fewer than 2 CPUs)"
    )
    lines = [
        "# nebula-sdk benchmarks",
        "",
        f"- Command: `{header['command']}` ({header['date']}, took {header['took']:.0f} s)",
        f"- Machine: {header['machine']}; {header['python']}",
        f"- Versions: {versions}",
        f"- Method: fixed-body server (`benchmarks/_server.py`) in its own process; {placement}; "
        f"{header['runs']} runs of {header['seconds']:g} s per client and scenario, clients interleaved; "
        "median (min–max); ratios are of medians. Every reply is checked. "
        "Client CPU is the client process's CPU time per call or event; server CPU is its share of one core "
        "(the highest of the runs: near 100% would mean the server set the pace).",
        "",
        "## Targets",
        "",
        *_targets(scenarios, rss, imports),
        "## Results",
        "",
    ]
    for scenario in scenarios:
        if scenario.results or scenario.skipped:
            lines += _scenario_table(scenario)
    lines += _rss_table(rss)
    lines += _import_table(imports)
    return "\n".join(lines).rstrip("\n") + "\n"
