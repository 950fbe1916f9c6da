"""Gate thresholds: per metric, with overrides by case pattern, metric and device kind
(fixtures/thresholds.toml). A bad file is one line naming the file and the field."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import QuantbenchError
from .decisions import Threshold

DEVICE_KINDS = ("cpu", "gpu")


@dataclass(frozen=True)
class Override:
    """Threshold fields for the cases an override selects: by case-name pattern, by metric, and by the
    kind of device the current run measured on (noise belongs to the machine, not to a model name)."""
    pattern: str = "*"
    metric: str | None = None
    device: str | None = None      # "cpu" or "gpu"; None: any
    fields: dict = field(default_factory=dict)

    def selects(self, case: str, metric: str, device: str | None) -> bool:
        return (wildcard_match(self.pattern, case) and self.metric in (None, metric)
                and self.device in (None, device))


@dataclass(frozen=True)
class Thresholds:
    metrics: dict[str, Threshold]
    overrides: tuple[Override, ...] = ()
    fallback: Threshold = field(default_factory=Threshold)
    slo: dict[str, dict[str, float]] = field(default_factory=dict)  # device kind -> {"ttft_ms": .., "tpot_ms": ..}

    def for_case(self, case: str, metric: str, device: str | None = None) -> Threshold:
        """The metric's threshold with every selecting override applied in file order (later wins).
        ``device``: the current run's device kind; without it, device overrides select nothing."""
        metric = metric.split(" [")[0]  # "request_goodput [SLO ...]": the metric's own threshold
        base = self.metrics.get(metric, self.fallback)
        for override in self.overrides:
            if override.selects(case, metric, device):
                base = replace(base, **override.fields)
        return base


def wildcard_match(pattern: str, name: str) -> bool:
    """'*' and '?' wildcards, everything else literal: case names contain '[' and ']', which
    fnmatch would read as a character class."""
    regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.fullmatch(regex, name) is not None


THRESHOLD_FIELDS = frozenset(("direction", "max_regression", "alpha", "min_rounds"))
# A serving SLO per device kind: vLLM's client counts a request good when it meets every one (--goodput).
SLO_FIELDS = frozenset(("ttft_ms", "tpot_ms", "e2el_ms"))


def _table(value, where: str) -> dict:
    """A TOML table where the file must hold one (a scalar there would crash the gate later, not load)."""
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a table, got {value!r}")
    return value


def _slo(data: dict) -> dict[str, dict[str, float]]:
    slo = {}
    for device, fields in _table(data, "[slo]").items():
        if device not in DEVICE_KINDS:
            raise ValueError(f"[slo.{device}]: the device kind must be one of {DEVICE_KINDS}")
        _table(fields, f"[slo.{device}]")
        _known_keys(fields, SLO_FIELDS, f"[slo.{device}]")
        for key, value in fields.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"[slo.{device}] {key} must be a positive number of milliseconds, got {value!r}")
        slo[device] = {key: float(value) for key, value in fields.items()}
    return slo


def _known_keys(table: dict, known: set | frozenset, where: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; known: "
                         f"{', '.join(sorted(known))}")


def parse_thresholds(text: str, source: str = "<thresholds>") -> Thresholds:
    """fixtures/thresholds.toml -> Thresholds; a bad file names itself and the field."""
    try:
        data = tomllib.loads(text)
        # A misspelt table or key would otherwise be ignored and the gate run at the defaults.
        _known_keys(data, {"defaults", "metrics", "overrides", "slo"}, "the top level")
        defaults = _table(data.get("defaults", {}), "[defaults]")
        _known_keys(defaults, THRESHOLD_FIELDS, "[defaults]")
        metrics = {}
        for name, fields in _table(data.get("metrics", {}), "metrics").items():
            _known_keys(_table(fields, f"[metrics.{name}]"), THRESHOLD_FIELDS, f"[metrics.{name}]")
            metrics[name] = Threshold(**{**defaults, **fields})
        overrides = []
        if not isinstance(data.get("overrides", []), list):
            raise ValueError(f"overrides must be an array of tables ([[overrides]]), got {data['overrides']!r}")
        for number, item in enumerate(data.get("overrides", []), 1):
            item = dict(_table(item, f"[[overrides]] number {number}"))
            if not isinstance(item.get("pattern", "*"), str) or not isinstance(item.get("metric", ""), str):
                raise ValueError(f"[[overrides]] number {number}: pattern and metric must be strings, got "
                                 f"pattern {item.get('pattern', '*')!r}, metric {item.get('metric')!r}")
            # direction belongs to the metric: an override that flipped it would read slower as better
            _known_keys(item, (THRESHOLD_FIELDS | {"pattern", "metric", "device"}) - {"direction"},
                        f"[[overrides]] number {number}")
            device = item.pop("device", None)
            if device not in (None, *DEVICE_KINDS):
                raise ValueError(f"override device must be one of {DEVICE_KINDS}, got {device!r}")
            if "pattern" not in item and device is None:
                raise ValueError("an override needs a pattern, a device, or both")
            metric = item.pop("metric", None)
            if metric is not None and metric not in metrics:
                raise ValueError(f"[[overrides]] number {number}: metric {metric!r} is not one of the file's "
                                 f"[metrics.*] tables ({', '.join(metrics)})")
            overrides.append(Override(item.pop("pattern", "*"), metric, device, item))
            Threshold(**{**defaults, **item})  # validate the fields now, not at first use
        return Thresholds(metrics, tuple(overrides), Threshold(**defaults), _slo(data.get("slo", {})))
    except (tomllib.TOMLDecodeError, TypeError, ValueError, KeyError) as exc:
        raise QuantbenchError(source, f"invalid thresholds file ({exc})",
                              "compare it with fixtures/thresholds.toml") from None


def load_thresholds(path: Path) -> Thresholds:
    path = Path(path)
    if not path.is_file():
        raise QuantbenchError(path, "no such thresholds file", "pass --thresholds fixtures/thresholds.toml")
    return parse_thresholds(path.read_text(), str(path))
