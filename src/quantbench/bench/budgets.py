"""Time budgets per case and per engine start (fixtures/budgets.toml, per device kind; options override)."""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import QuantbenchError, TooSlow
from ..paths import REPO_ROOT

BUDGETS = REPO_ROOT / "fixtures" / "budgets.toml"
FIELDS = ("case_s", "engine_start_s")
OPTIONAL = ("server_start_s",)  # a serving run's server, process start to healthy (default: engine_start_s)


@dataclass(frozen=True)
class Budget:
    case_s: float
    engine_start_s: float
    server_start_s: float | None = None

    @property
    def server_s(self) -> float:
        return self.server_start_s or self.engine_start_s


def kind_of(device: str) -> str:
    """The device kind the files are keyed by, 'cpu' or 'gpu' (the thresholds' [slo.gpu] and overrides say the
    same), from a torch device type ('cuda') or a kind."""
    return "gpu" if device in ("cuda", "gpu") else device


def parse_budgets(text: str, device_kind: str, source: str = "<budgets>") -> Budget:
    """The budgets of ``device_kind`` ('cpu', 'gpu'; 'cuda' reads as 'gpu'); a bad file is one line naming it and
    the field."""
    fix = f"compare it with {BUDGETS.relative_to(REPO_ROOT)}"
    device_kind = kind_of(device_kind)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise QuantbenchError(source, f"invalid budgets file ({exc})", fix) from None
    table = data.get(device_kind)
    if not isinstance(table, dict) and device_kind == "gpu" and isinstance(data.get("cuda"), dict):
        raise QuantbenchError(source, "a [cuda] table: the device kind is called gpu, as in the thresholds file",
                              "rename [cuda] to [gpu]")
    if not isinstance(table, dict):
        raise QuantbenchError(source, f"no [{device_kind}] table of time budgets", fix)
    unknown = sorted(set(table) - set(FIELDS) - set(OPTIONAL))
    missing = [f for f in FIELDS if f not in table]
    if unknown or missing:
        raise QuantbenchError(source, f"[{device_kind}]: unknown key(s) {unknown}, missing {missing}", fix)
    for name in [f for f in FIELDS + OPTIONAL if f in table]:
        value = table[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise QuantbenchError(source, f"[{device_kind}] {name} must be a positive number of seconds, "
                                  f"got {value!r}", fix)
    server = table.get("server_start_s")
    return Budget(float(table["case_s"]), float(table["engine_start_s"]), float(server) if server else None)


def load_budgets(device_kind: str, path: Path = BUDGETS, case_s: float | None = None,
                 engine_start_s: float | None = None) -> Budget:
    """The file's budgets for this device kind, each replaced by the option given for it."""
    path = Path(path)
    if not path.is_file():
        raise QuantbenchError(path, "no such budgets file", f"restore {BUDGETS.relative_to(REPO_ROOT)}")
    budget = parse_budgets(path.read_text(), device_kind, str(path))
    # --qb-start-budget bounds every start, a server's included
    return Budget(case_s or budget.case_s, engine_start_s or budget.engine_start_s,
                  engine_start_s or budget.server_start_s)


@dataclass
class CaseClock:
    """One case against its budget: the round in flight and what a stopped case had reached."""

    budget_s: float
    phase: str
    rounds: int          # timed rounds
    warmup: int          # warm-up rounds before them
    batch: int
    kernel: str | None = None
    start: float = field(default_factory=time.monotonic)
    round: int = 0       # the round in flight, 1-based (warm-up included); 0 while the case is prepared
    round_start: float = 0.0

    @property
    def deadline(self) -> float:
        return self.start + self.budget_s

    def next_round(self) -> None:
        self.round += 1
        self.round_start = time.monotonic()

    def doing(self) -> str:
        if self.round == 0:
            return f"{self.phase}: preparing the case at its shape"
        warm = f", {self.warmup} warm-up" if self.warmup else ""
        return f"{self.phase} round {self.round} of {self.rounds + self.warmup}{warm}"

    def too_slow(self, steps: int | None = None) -> TooSlow:
        """The TooSlow to raise: what it reached (and, in a decode round, its rate there), budget, kernel."""
        now = time.monotonic()
        rate = ""
        if steps and self.round:
            rate = f", {steps} decode steps into it ({steps * self.batch / max(now - self.round_start, 1e-9):.3g} tok/s)"
        return TooSlow(f"{self.doing()} after {now - self.start:.0f} s{rate}, budget {self.budget_s:.0f} s"
                       + (f"; kernel {self.kernel}" if self.kernel else ""), self.kernel)

    def check(self) -> None:
        """In-process: after a round, stop the case if it has passed its budget."""
        if time.monotonic() > self.deadline:
            raise self.too_slow()
