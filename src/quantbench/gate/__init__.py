"""The regression gate: pure decisions (decisions), thresholds, the samples read from runs (inputs),
baselines from a history, and a whole-run result with its PR summary (result). No torch."""

from .baselines import crosses_upgrade, rerun_args, resolve_baselines  # noqa: F401
from .decisions import (  # noqa: F401
    BROKEN,
    DEFAULT_FAIL_ON,
    KERNEL_CHANGED_NOTE,
    KERNEL_METRIC,
    STATED_IN_BOTH,
    STATES,
    SUITE,
    Decision,
    Sample,
    Threshold,
    compare_runs,
    decide,
    decide_suite,
    exit_code,
    fold_stated_cases,
    kernel_changes,
    machine_differences,
    pairs_can_decide,
    parse_fail_on,
    run_level_test,
    runs_can_decide,
    same_kernel,
    with_kernel_changes,
    worst_first,
)
from .inputs import kernels_ran, merged_samples, samples  # noqa: F401
from .result import MARKDOWN_MAX_CHARS, GateResult, confirm, run_gate  # noqa: F401
from .thresholds import Override, Thresholds, load_thresholds, parse_thresholds, wildcard_match  # noqa: F401
