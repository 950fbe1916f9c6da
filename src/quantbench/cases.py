"""The benchmark matrix: option strings -> validated cases (pure; no torch)."""

from __future__ import annotations

from dataclasses import dataclass

PHASES = ("prefill", "decode")

CPU_DEFAULTS = {"models": "tiny", "batch": "1,4", "prompt": "32,128", "new_tokens": 32, "rounds": 10, "warmup": 3,
                "kernel_rounds": 5}
GPU_DEFAULTS = {"models": "qwen2.5-3b,mistral-7b", "batch": "1,8,32", "prompt": "128,2048",
                "new_tokens": 128, "rounds": 10, "warmup": 2,
                "kernel_rounds": 20}


@dataclass(frozen=True)
class Case:
    source: object            # pool.ModelSource (kept opaque here)
    format: str | None        # None when the source itself is broken
    batch: int
    prompt_len: int
    new_tokens: int
    phase: str
    error: str | None = None  # a one-line message for a source that cannot be used

    @property
    def id(self) -> str:
        if self.error is not None:
            return f"{self.source.label}-invalid"
        return f"{self.source.label}-{self.format}-b{self.batch}-p{self.prompt_len}-{self.phase}"

    def params(self) -> dict:
        return {"model": self.source.label, "format": self.format, "batch": self.batch,
                "prompt_len": self.prompt_len, "new_tokens": self.new_tokens, "phase": self.phase}


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"{what} must be a comma-separated list of integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{what} must be positive integers, got {text!r}")
    return values


def build_cases(sources, formats_for, formats: list[str], batches: list[int], prompts: list[int],
                new_tokens: int, base_of=lambda name: name) -> list[Case]:
    """Nested source -> format -> batch -> prompt -> phase, so one loaded model serves a run of cases.

    ``formats_for(source)`` returns the formats that source can run (None = all), or raises with a
    message for a source that cannot be read: that becomes one failing case, and the run goes on.
    ``base_of(format)`` names the format whose checkpoint a variant runs ('bf16+compile' -> 'bf16').
    """
    cases = []
    for source in sources:
        try:
            allowed = formats_for(source)
        except Exception as exc:  # noqa: BLE001 - the message is shown as the case's failure
            cases.append(Case(source, None, 0, 0, 0, "prefill", error=str(exc)))
            continue
        chosen = [f for f in formats if allowed is None or base_of(f) in allowed]
        for fmt in chosen:
            for batch in batches:
                for prompt in prompts:
                    for phase in PHASES:
                        cases.append(Case(source, fmt, batch, prompt, new_tokens, phase))
    return cases
