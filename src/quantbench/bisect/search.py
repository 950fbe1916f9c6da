"""Which release to probe next, and what the probes say (pure: no processes, no files).

Releases are ordered by version. The good release is the A side of every probe; each probe's verdict is
"good" (the gate's paired test found no regression past the threshold), "bad" (a regression, or the case
crashed or was unsupported: the gate fails a case measured before and stated now) or "unbuildable" (the release
would not install or import beside the stack: stepped over, as `git bisect skip`)."""

from __future__ import annotations

from dataclasses import dataclass

VERDICTS = ("good", "bad", "unbuildable")
# What a bisection looks for: the first release slower than --good (a regression), or the first faster (the release
# that brought a speedup, as git bisect's old/new terms). "bad" is the new behaviour either way; these words say it.
LOOKING_FOR = {"slower": {"good": "good", "bad": "bad", "worse": "worse"},
               "faster": {"good": "not faster", "bad": "faster", "worse": "faster"}}


@dataclass(frozen=True)
class Probe:
    version: str
    verdict: str
    ratio: float | None = None     # the case's metric on this release / on the good release (paired)
    p_value: float | None = None
    why: str = ""                  # the gate's words, pip's or Python's, or the case's state and reason
    seconds: float = 0.0

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


def releases_between(available: list[str], good: str, bad: str, prereleases: bool = False) -> list[str]:
    """The releases from ``good`` to ``bad`` inclusive, oldest first; both must be among ``available``."""
    from packaging.version import InvalidVersion, Version

    def parsed(text):
        try:
            return Version(text)
        except InvalidVersion:
            return None
    known = {v: parsed(v) for v in available}
    low, high = parsed(good), parsed(bad)
    for name, version in ((good, low), (bad, high)):
        if version is None or name not in known:
            raise ValueError(f"{name} is not a release the registry lists (it lists {len(available)})")
    if not low < high:
        raise ValueError(f"--good {good} must be older than --bad {bad}")
    inside = [v for v, p in known.items() if p is not None and low <= p <= high and (prereleases or not p.is_prerelease
                                                                                   or v in (good, bad))]
    return sorted(inside, key=lambda v: known[v])


def next_probe(releases: list[str], probes: dict[str, Probe]) -> str | None:
    """The release to probe next, or None when the search is over. The last release is probed first (is it
    bad at all?); then the middle of the interval between the newest good and the oldest bad release, the
    buildable candidate nearest the middle where the middle would not build."""
    last = releases[-1]
    if last not in probes:
        return last
    if probes[last].verdict != "bad":
        return None
    low, high = _bounds(releases, probes)
    candidates = [i for i in range(low + 1, high) if releases[i] not in probes]
    if not candidates:
        return None
    middle = (low + high) / 2
    return releases[min(candidates, key=lambda i: (abs(i - middle), i))]


def _bounds(releases: list[str], probes: dict[str, Probe]) -> tuple[int, int]:
    """(index of the newest release known good, index of the oldest known bad after it)."""
    low = max([0] + [i for i, v in enumerate(releases) if probes.get(v) and probes[v].verdict == "good"])
    high = min(i for i, v in enumerate(releases) if i > low and probes.get(v) and probes[v].verdict == "bad")
    return low, high


def outcome(releases: list[str], probes: dict[str, Probe], find: str = "slower") -> tuple[str | None, str]:
    """(the first release with the change looked for, or None; the answer in words)."""
    words = LOOKING_FOR[find]
    last = probes.get(releases[-1])
    if last is None:
        return None, "not probed"
    if last.verdict == "unbuildable":
        return None, f"{releases[-1]} (the newer end) would not build here: {last.why}"
    if last.verdict == "good":
        return None, (f"{releases[-1]} is not {words['worse']} than {releases[0]} at this case here (ratio "
                      f"{last.ratio:.3f}, p={last.p_value:.2g}): nothing to bisect")
    low, high = _bounds(releases, probes)
    skipped = [v for v in releases[low + 1:high] if probes.get(v) and probes[v].verdict == "unbuildable"]
    if skipped:
        return None, (f"the first {words['bad']} release is one of {', '.join([*skipped, releases[high]])}: between "
                      f"{releases[low]} ({words['good']}) and {releases[high]} ({words['bad']}) every release would "
                      "not build")
    return releases[high], (f"first {words['bad']} release: {releases[high]} (the release before it, {releases[low]}, "
                            f"is {words['good']})")
