"""``--qb-shard I/N``: a deterministic 1/N of the case matrix, so one nightly can be split across
runners that store into one history. Cases that share a loaded model (model x format x runtime) or a
prepared kernel stay in one shard: splitting them would load every model on every runner. Units are
dealt largest first to the shard with the least work so far (ties: the lower shard); every shard
computes the same deal from the same collected matrix, and records all of it, so a shard that never
stored its run still names its cases."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import QuantbenchError

GROUP_VARIABLES = ("QUANTBENCH_GROUP", "GITHUB_RUN_ID")


@dataclass
class Shard:
    index: int
    count: int
    group: str
    plan: dict[str, list[str]] = field(default_factory=dict)  # "1".."N" -> node ids of that shard

    def select(self, items: list) -> tuple[list, list]:
        """Collected items -> (this shard's, the others'), in collection order; fills ``plan``."""
        assigned = deal([unit_of(item) for item in items], self.count)
        self.plan = {str(i): [] for i in range(1, self.count + 1)}
        for item, shard in zip(items, assigned):
            self.plan[str(shard)].append(item.nodeid)
        keep = [item for item, shard in zip(items, assigned) if shard == self.index]
        return keep, [item for item, shard in zip(items, assigned) if shard != self.index]

    def record(self) -> dict:
        return {"group": self.group, "index": self.index, "count": self.count, "cases": self.plan}

    def describe(self) -> str:
        mine = len(self.plan.get(str(self.index), []))
        total = sum(len(v) for v in self.plan.values())
        return f"shard {self.index}/{self.count} of group {self.group}: {mine} of {total} cases"


def deal(units: list[str], count: int) -> list[int]:
    """Each item's unit -> the shard (1..count) it runs in. Pure and deterministic: units by size,
    largest first (name breaks ties), each to the shard with the fewest cases so far."""
    sizes: dict[str, int] = {}
    for unit in units:
        sizes[unit] = sizes.get(unit, 0) + 1
    load = [0] * count
    shard_of = {}
    for unit in sorted(sizes, key=lambda u: (-sizes[u], u)):
        target = min(range(count), key=lambda i: (load[i], i))
        shard_of[unit] = target + 1
        load[target] += sizes[unit]
    return [shard_of[unit] for unit in units]


def unit_of(item) -> str:
    """The cases that must stay together: one loaded model, or one kernel on one model's shapes."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    case = params.get("qb_case") or params.get("qb_serving_case")  # one server serves a checkpoint's load points
    if case is not None:
        return f"model:{case.source.label}|{case.format}|{case.runtime}"
    kernel = params.get("qb_kernel_case")
    if kernel is not None:
        return f"kernel:{kernel.kernel}|{kernel.model}"
    return f"test:{item.nodeid}"


def parse_shard(text: str | None, group: str | None, environ) -> Shard | None:
    """'2/4' -> Shard(2, 4, group); the group from --qb-group, $QUANTBENCH_GROUP or $GITHUB_RUN_ID."""
    if not text:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        index = count = 0
    if not 1 <= index <= count:
        raise QuantbenchError(None, f"--qb-shard {text}: not I/N with 1 <= I <= N", "pass e.g. --qb-shard 1/2")
    group = group or next((environ[v] for v in GROUP_VARIABLES if environ.get(v)), None)
    if not group:
        raise QuantbenchError(None, f"--qb-shard {text} needs the id its shards share",
                              "pass --qb-group ID (the same on every shard), or set QUANTBENCH_GROUP; on GitHub "
                              "Actions GITHUB_RUN_ID is used")
    return Shard(index, count, str(group))
