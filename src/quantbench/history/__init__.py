"""Run history: stored runs (store: files; stores: a folder or a PostgreSQL database), runs as tables
(frame), merged, combined and sharded runs (merge), device ceilings.

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
    frame_of,
    hardware,
    load_frame,
    per_round_values,
    run_frame,
    stack_name,
    stated_case_name,
)
from .merge import combine_group, combine_runs, merge_runs, run_ids, runs_in  # noqa: F401
from .postgres import redact  # noqa: F401
from .record import SCHEMA_VERSION, case_info, commit, declared, machine, section, states  # noqa: F401
from .store import (  # noqa: F401
    INTERRUPTED_REASON,
    MIGRATE_FIX,
    RUN_ROUNDS_KEY,
    check_payload,
    latest_run,
    load_run,
    run_filename,
    run_files,
    save_run,
    shard_group_name,
    signature,
    write_atomic,
)
from .stores import (  # noqa: F401
    FolderStore,
    collapse,
    group_of,
    is_database,
    load_ref,
    open_store,
    read_all,
    units,
)
