"""`quantbench bisect`: the first release of a library between a good and a bad one at which a case got slower
(or stopped running), found by probing releases in A/B pairs against the good one on this machine.

search (pure: which release next, what the probes say) <- releases (the registry, one overlay per release)
<- probe (A/B pairs, the gate's paired test). The probes' runs are stored in the history like any run."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .search import LOOKING_FOR, Probe, next_probe, outcome, releases_between


@dataclass
class Plan:
    package: str
    good: str
    bad: str
    case: str
    module: str | None = None          # what a release must import (default: the package's name)
    pairs: int = 5
    rounds: int = 10
    new_tokens: int | None = None
    history: str = "history"
    cache: Path = Path(".cache/quantbench/bisect")
    index_args: list[str] = field(default_factory=list)
    cwd: Path = Path(".")
    pytest_args: tuple[str, ...] = ()  # given to every run (-p a plugin that registers the case's runtime)
    find: str = "slower"               # or "faster": the release that brought a speedup


def run(plan: Plan, thresholds, say=print) -> tuple[str | None, list[Probe]]:
    """Bisect; (the first bad release or None, every probe in the order made). ``say`` gets each line."""
    from tqdm import tqdm

    from . import probe as probing
    from . import releases as registry

    start = time.perf_counter()
    module = plan.module or plan.package.replace("-", "_")
    versions = releases_between(registry.available_versions(plan.package, plan.index_args), plan.good, plan.bad)
    target = probing.target_for(plan.case, plan.rounds, plan.new_tokens, plan.pytest_args)
    threshold = thresholds.for_case(target.name, target.metric)
    terms = LOOKING_FOR[plan.find]
    say(f"quantbench bisect: {plan.package} {plan.good} ({terms['good']}) .. {plan.bad} ({terms['bad']}): "
        f"{len(versions)} releases, looking for the first {plan.find}; "
        f"{target.name} [{target.metric}], {plan.pairs} A/B pairs of {plan.rounds} rounds a probe, "
        f"threshold {threshold.max_regression:.0%}")
    good_overlay, why = registry.overlay(plan.package, plan.good, module, plan.cache, plan.index_args)
    if good_overlay is None:
        raise_unbuildable(plan.good, why)
    _warm_up(target, good_overlay, plan)
    probes: dict[str, Probe] = {}
    expected = max(1, len(versions) - 2).bit_length() + 1
    with tqdm(total=expected * plan.pairs, desc="bisect pairs", unit="pair", leave=False) as progress:
        while (version := next_probe(versions, probes)) is not None:
            probes[version] = _probe(version, target, good_overlay, plan, module, threshold, progress)
            say(probe_line(probes[version], plan.find))
    first_bad, words = outcome(versions, probes, plan.find)
    say(f"quantbench bisect: {words}; {len(probes)} probes in {time.perf_counter() - start:.0f} s")
    return first_bad, list(probes.values())


def _probe(version: str, target, good_overlay: Path, plan: Plan, module: str, threshold, progress) -> Probe:
    from . import probe as probing
    from . import releases as registry

    folder, why = registry.overlay(plan.package, version, module, plan.cache, plan.index_args)
    if folder is None:
        return Probe(version, "unbuildable", why=why)
    out_dir = plan.cache / "runs" / f"{plan.package}-{version}-vs-{plan.good}-{int(time.time())}"
    return probing.timed_probe(version, target, {"good": good_overlay, "probe": folder}, plan.pairs, plan.history,
                               out_dir, plan.cwd, threshold, progress, plan.find)


def _warm_up(target, good_overlay: Path, plan: Plan) -> None:
    """One untimed run of the case on the good release: checkpoints built and caches filled before any pair."""
    import os
    import subprocess

    from ..errors import QuantbenchError
    from .releases import with_overlay
    proc = subprocess.run(target.command("--benchmark-disable"), check=False, cwd=plan.cwd,
                          env=with_overlay(os.environ, good_overlay), capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        tail = [line for line in proc.stdout.splitlines() if line.strip()][-3:]
        raise QuantbenchError(None, f"the case does not run on the good release {plan.good}: {' / '.join(tail)}",
                              "run it alone with the same pytest options to see why")


def raise_unbuildable(version: str, why: str):
    from ..errors import QuantbenchError
    raise QuantbenchError(None, f"the good release {version} is unbuildable here: {why}",
                          "pick a --good release that installs and imports beside this stack")


def probe_line(probe: Probe, find: str = "slower") -> str:
    if probe.verdict == "unbuildable":
        return f"  {probe.version:<12} unbuildable: {probe.why}"
    verdict = LOOKING_FOR[find][probe.verdict]
    if probe.ratio is None:
        return f"  {probe.version:<12} {verdict:<5} {probe.why} ({probe.seconds:.0f} s)"
    return (f"  {probe.version:<12} {verdict:<5} ratio {probe.ratio:.3f} p={probe.p_value:.3g} "
            f"({probe.seconds:.0f} s)")
