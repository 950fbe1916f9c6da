"""The benchmark matrix: option strings -> validated cases (pure; no torch)."""

from __future__ import annotations

from dataclasses import dataclass

PHASES = ("prefill", "decode")

CPU_DEFAULTS = {"models": "tiny", "batch": "1,4", "prompt": "32,128", "new_tokens": 32, "rounds": 10, "warmup": 3,
                "kernel_rounds": 5,
                # serving (benchmarks/test_serving.py): a few points of a few dozen requests on the tiny model;
                # the server eager, as vLLM's own CPU perf CI serves (a compiled start costs 20-35 s more)
                "serve_concurrency": "1,2,4", "serve_input_len": 32, "serve_output_len": 32, "serve_rounds": 5,
                "serve_warmup": 1, "serve_prompts_floor": 16, "serve_eager": True}
# GPU serving: three load points of a few dozen prompts (one checkpoint's server fits a 10-minute command: see
# bench.plan); the whole sweep is `--qb-serve-concurrency full`.
FULL_SERVE_SWEEP = "1,2,4,8,16,32,64,128,256"
GPU_DEFAULTS = {"models": "qwen2.5-3b,mistral-7b", "batch": "1,8,32", "prompt": "128,2048",
                "new_tokens": 128, "rounds": 10, "warmup": 2,
                "kernel_rounds": 20,
                "serve_concurrency": "1,16,64", "serve_input_len": 512, "serve_output_len": 128,
                "serve_rounds": 3, "serve_warmup": 1, "serve_prompts_floor": 32, "serve_eager": False}


@dataclass(frozen=True)
class Case:
    source: object            # pool.ModelSource (kept opaque here)
    format: str | None        # None when the source itself is broken
    runtime: str | None       # what executes the loaded checkpoint (quantbench.runtimes)
    batch: int
    prompt_len: int
    new_tokens: int
    phase: str
    error: str | None = None  # a one-line message for a source that cannot be used

    @property
    def id(self) -> str:
        if self.error is not None:
            return f"{self.source.label}-invalid"
        return f"{self.source.label}-{self.format}-{self.runtime}-b{self.batch}-p{self.prompt_len}-{self.phase}"

    def params(self) -> dict:
        return {"model": self.source.label, "format": self.format, "runtime": self.runtime, "batch": self.batch,
                "prompt_len": self.prompt_len, "new_tokens": self.new_tokens, "phase": self.phase}


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{what} must be a comma-separated list of integers, got {text!r}. Fix: pass e.g. "
                         f"{what} 1,4,16") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{what} must be positive integers, got {text!r}. Fix: pass e.g. {what} 1,4,16")
    return values


def build_cases(sources, formats_for, pairs: list[tuple[str, str]], batches: list[int], prompts: list[int],
                new_tokens: int) -> list[Case]:
    """Nested source -> (format, runtime) -> batch -> prompt -> phase, so one loaded model serves a run of
    cases.

    ``formats_for(source)`` returns the formats that source can run (None = all), or raises with a
    message for a source that cannot be read: that becomes one failing case, and the run goes on.
    """
    cases = []
    for source in sources:
        try:
            allowed = formats_for(source)
        except Exception as exc:  # noqa: BLE001 - the message is shown as the case's failure
            cases.append(Case(source, None, None, 0, 0, 0, "prefill", error=str(exc)))
            continue
        for fmt, runtime in pairs:
            if allowed is not None and fmt not in allowed:
                continue
            for batch in batches:
                for prompt in prompts:
                    for phase in PHASES:
                        cases.append(Case(source, fmt, runtime, batch, prompt, new_tokens, phase))
    return cases
