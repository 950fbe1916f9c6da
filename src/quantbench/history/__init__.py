"""Run history: stored runs (store), runs as tables (frame), merged runs (merge), device ceilings.

No torch import anywhere under this package (tests/test_layers.py checks it).
"""

from .frame import (  # noqa: F401
    CASE_COLUMNS,
    COMPARABILITY_FIELDS,
    ONCE_PER_CASE_METRICS,
    case_state,
    device_kind,
    environment_fields,
    filter_frame,
    hardware,
    load_frame,
    per_round_values,
    run_frame,
    stack_name,
    stated_case_name,
)
from .merge import combine_runs, merge_runs, run_ids, runs_in  # noqa: F401
from .record import SCHEMA_VERSION, case_info, commit, declared, machine, section, states  # noqa: F401
from .store import (  # noqa: F401
    INTERRUPTED_REASON,
    MIGRATE_FIX,
    RUN_ROUNDS_KEY,
    latest_run,
    load_run,
    readable,
    run_filename,
    run_files,
    save_run,
    signature,
    write_atomic,
)
