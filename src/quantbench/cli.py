"""The quantbench command: fixtures, formats, inspect (and gate, report, peaks, export).

Every user error is one line on stderr naming the file and the fix, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import BadHistory, QuantbenchError
from .offline import stay_offline


def _device(name: str):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cmd_fixtures_build(args) -> int:
    from .formats import parse_formats
    from .formats.checkpoints import UNBUILDABLE, build_fixtures
    formats = parse_formats(args.formats)
    for model in args.model:
        built = build_fixtures(model, formats, _device(args.device), force=args.force)
        for kind, path in built.items():
            print(f"{model:>16} {kind:<16} {path}")
        for kind, why in UNBUILDABLE.items():
            print(f"{model:>16} {kind:<16} unsupported: {why}")
    return 0


def cmd_fixtures_list(args) -> int:
    from .specs import available_specs, load_spec
    for name in available_specs():
        spec = load_spec(name)
        print(f"{name:<16} {spec.architecture:<8} {spec.parameter_count() / 1e9:6.2f}B params  "
              f"hidden {spec.hidden_size}, {spec.num_hidden_layers} layers  ({spec.source})")
    return 0


def cmd_formats(args) -> int:
    from .formats import FORMATS
    from .runtimes import RUNTIMES
    print(f"{'format':<20} {'checkpoint':<16} {'bits':<4} {'library':<32} what")
    for fmt in FORMATS.values():
        print(f"{fmt.name:<20} {fmt.checkpoint:<16} {fmt.bits or 16:<4} {fmt.library:<32} {fmt.description}")
    from .servers import SERVERS
    print("\nruntimes (--qb-runtimes; the servers last, measured under load by benchmarks/test_serving.py):")
    for runtime in [*RUNTIMES.values(), *SERVERS.values()]:
        also = f" (also: <format>{runtime.format_suffix})" if runtime.format_suffix else ""
        print(f"{runtime.name:<20} {runtime.description}{also}")
    return 0


def cmd_inspect(args) -> int:
    from .formats.checkpoints import detect_checkpoint
    status = 0
    for path in args.path:
        try:
            found = detect_checkpoint(path)
            print(json.dumps({"path": str(found.path), "kind": found.kind, "formats": list(found.formats),
                              "quant_method": found.quant_method}))
            if found.own_code:
                print(f"quantbench: note: {found.own_code}", file=sys.stderr)
        except QuantbenchError as exc:
            print(f"quantbench: error: {exc.line()}", file=sys.stderr)
            status = 2
    return status


def _thresholds(args):
    from .gate import load_thresholds
    from .paths import THRESHOLDS
    return load_thresholds(args.thresholds or THRESHOLDS)


def cmd_gate(args) -> int:
    from . import history
    from .gate import parse_fail_on
    fail_on = parse_fail_on(args.fail_on)  # before anything is read: a typo here fails nothing ever
    store = history.open_store(args.history)
    try:
        if args.group:
            currents = _group_runs(store, args.group)
        elif args.current is None:
            raise QuantbenchError(None, "quantbench gate needs --current or --group",
                                  "pass --current FILE|latest, or --group ID for a sharded run")
        else:
            currents = [_current_run(store, args.current)]
        results = [_gate_one(args, store, fail_on, *current) for current in currents]
    finally:
        store.close()
    if args.markdown:
        from pathlib import Path
        Path(args.markdown).write_text("\n".join(text for _, text in results if text), encoding="utf-8")
    return max(code for code, _ in results)


def _current_run(store, text: str):
    """--current: 'latest' (the newest run in the history, its shards joined), a file, or a stored run."""
    from pathlib import Path

    from . import history
    if text == "latest":
        newest = history.units(store.runs(), store.name_of)
        if not newest:
            store.latest()  # raises: no runs stored
        refs = newest[-1]
    else:
        found = Path(text) if Path(text).is_file() else store.find(text)
        refs = [found if found is not None else Path(text)]
    where, payload = history.collapse(history.read_all(store, refs))[-1]
    return where, payload, refs[-1] if len(refs) == 1 else None


def _group_runs(store, group: str) -> list:
    """--group: the shards of one sharded run, joined, one run per machine signature."""
    from . import history
    wanted = history.shard_group_name(group)
    refs = [ref for ref in store.runs() if (history.group_of(store.name_of(ref)) or ("",))[0] == wanted]
    if not refs:
        raise QuantbenchError(store.label, f"no runs of group {group} stored",
                              "check the group id (the shards' --qb-group or GITHUB_RUN_ID) and --history")
    runs = history.collapse(history.read_all(store, refs))
    return [(where, payload, None) for where, payload in runs]


def _gate_one(args, store, fail_on: tuple, current_where: str, current: dict, current_ref) -> tuple[int, str]:
    """Gate one run; (exit status, Markdown summary)."""
    from . import gate, history
    from .errors import NoBaseline
    try:
        baseline_refs = gate.resolve_baselines(args.baseline, store, current, current_ref, args.baseline_runs)
    except NoBaseline as exc:
        root = getattr(store, "root", None)
        if root is not None and not root.is_dir():  # T29, T29b: a misspelt --history is never "no earlier run"
            raise QuantbenchError(root, "no such history folder (--if-no-baseline pass covers a first run, not a "
                                  "folder that is not there)", "check --history") from None
        if args.if_no_baseline != "pass":
            raise
        print(f"quantbench gate: nothing to compare with, passed (--if-no-baseline pass): {exc.line()}")
        return 0, ""
    baseline_runs = history.collapse(history.read_all(store, baseline_refs))
    baselines = [payload for _, payload in baseline_runs]
    thresholds = _thresholds(args)
    current_runs, baseline_count = history.runs_in(current), sum(history.runs_in(b) for b in baselines)
    if args.paired and current_runs != baseline_count:
        print(f"quantbench gate: error: {current_where}: --paired needs the current file to be a merge of as many "
              f"runs as the baseline holds ({baseline_count}), it holds {current_runs}. Fix: quantbench "
              "merge the current side's runs, in the order of the baseline runs", file=sys.stderr)
        return 2, ""
    upgrade = gate.crosses_upgrade(args.baseline, current, baselines)
    if upgrade:
        print(f"quantbench gate: first run of signature {history.signature(current)}: comparing with the stack it "
              f"replaced ({history.signature(baselines[-1])})")
    result = gate.run_gate(current, baselines, thresholds, fail_on, args.allow_incomparable, args.paired, upgrade)
    for attempt in range(args.confirm_rerun):
        if not result.exit_code:
            break
        result = _confirm_by_rerun(result, current, baselines, thresholds, fail_on)
    print(f"quantbench gate: current  {current_where}")
    for where, _ in baseline_runs:
        print(f"                 baseline {where}")
    _print_group_state(current)
    print(result.table())
    for decision in result.decisions:
        if decision.state == "regressed":
            print("REGRESSED " + decision.message())
    if result.machine_note:
        print(f"quantbench gate: {result.machine_note}")
    if blind := result.blind_spots():
        print(f"quantbench gate: {blind}")
    compared = any(d.state != "incomparable" for d in result.decisions)
    verdict = "FAILED" if result.exit_code else "passed" if compared else "NOT COMPARED (incomparable)"
    print(f"quantbench gate: {verdict} {result.counts()}")
    heading = f"#### {history.signature(current)}\n\n" if args.group else ""  # one section per signature
    if not compared and not result.exit_code and args.if_no_baseline != "pass":
        # a gate that compared nothing is no pass a CI script can trust, unless the user said it may be
        print("quantbench gate: failed: the baseline was measured on another machine or stack, so nothing was "
              "compared. Fix: pass --allow-incomparable to compare them anyway (labelled), or --if-no-baseline "
              "pass to accept a gate that compared nothing")
        return 1, heading + result.markdown()
    return result.exit_code, heading + result.markdown()


def _print_group_state(payload: dict) -> None:
    from .history import record
    group = record.section(payload).get("group")
    if group and group.get("missing"):
        print(f"quantbench gate: group {group['id']}: shard(s) {', '.join(map(str, group['missing']))} of "
              f"{group['shards']} not stored: their cases are 'missing' (not compared, never a regression)")
    elif group:
        print(f"quantbench gate: group {group['id']}: all {group['shards']} shards stored, gated as one run")


def _confirm_by_rerun(result, current, baselines, thresholds, fail_on):
    import subprocess
    import tempfile
    from pathlib import Path

    from . import gate, history
    from .gate import SUITE
    names = sorted({d.case for d in result.decisions if d.state == "regressed" and d.case != SUITE})
    nodeids = [b["fullname"] for b in current.get("benchmarks", []) if b["name"] in names]
    if not nodeids:
        return result
    with tempfile.TemporaryDirectory(prefix="quantbench-rerun-") as scratch:
        out = Path(scratch) / "rerun.json"
        args = gate.rerun_args(current, nodeids, out)
        print(f"quantbench gate: re-running {len(nodeids)} regressed case(s) to confirm")
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args])
        if proc.returncode not in (0, 1) or not out.is_file():
            print("quantbench gate: the confirm rerun did not produce results; keeping the first decision")
            return result
        return gate.confirm(result, history.load_run(out), baselines, thresholds, fail_on)


def cmd_export(args) -> int:
    from pathlib import Path

    from . import history
    from .gate import export
    store = history.open_store(args.history)
    try:
        _, payload, _ = _current_run(store, args.current)
    finally:
        store.close()
    for path in export.write_github_action_benchmark(payload, _thresholds(args), Path(args.out_dir)):
        print(path)
    return 0


def _skipped(command: str):
    """A warning line for a damaged file in a history folder: named with its fix, the rest is still read."""
    def warn(exc) -> None:
        print(f"quantbench {command}: skipped {exc.line()}", file=sys.stderr)
    return warn


def cmd_history(args) -> int:
    from pathlib import Path

    from . import history
    from .history import journal
    store = history.open_store(args.history)
    try:
        for file in args.add:
            # a run measured elsewhere (another machine, a --benchmark-json whose history save failed):
            # validated, stored under its own signature, never twice
            where, stored_now = store.save(history.load_run(file), added=True)
            print(f"{file}: stored as {where}" if stored_now else f"{file}: already stored as {where}")
            if journal.is_journal(file) and Path(file).parent.name == journal.JOURNALS:
                Path(file).unlink(missing_ok=True)  # a history folder's unfinished run, now stored: not listed again
        if args.action == "import":
            return _import(store, args.folder)
        if args.action == "export":
            return _export(store, args.to)
        return _list(store)
    finally:
        store.close()


def _list(store) -> int:
    from . import history
    from .history import journal
    root = getattr(store, "root", None)
    _clean_orphans(root)
    for left in sorted(root.glob(f"{journal.JOURNALS}/*{journal.SUFFIX}")) if root is not None else []:
        cases = sum(1 for entry in journal.read(left) if entry.get("kind") in ("case", "state"))
        print(f"{left}: a run that never ended ({cases} finished case(s)): store it with `quantbench history "
              f"--history {store.label} --add {left}`")
    frame = history.frame_of(history.read_all(store, store.runs(), _skipped("history")))
    if frame.empty:
        print(f"no history under {store.label}")
        return 0
    table = frame.groupby(["signature", "file"], dropna=False).agg(
        cases=("name", "count"), commit=("commit", "first"), datetime=("datetime", "first")).reset_index()
    print(table.to_string(index=False))
    return 0


ORPHAN_AGE_S = 600  # a temp file younger than this may be a writer's at work right now: reported, not removed


def _clean_orphans(root) -> None:
    """T35: the hidden temp files of history writers that were killed between writing and renaming (a stored run
    is written to .<run>.json.*.tmp, then renamed whole): reported, and removed once no writer can still own
    them. No run is lost with them: the one a temp file held is in its run's journal or --benchmark-json."""
    import time
    if root is None or not root.is_dir():
        return
    now = time.time()
    for tmp in sorted(root.glob("*/.*.tmp")):
        age = now - tmp.stat().st_mtime
        if age >= ORPHAN_AGE_S:
            tmp.unlink(missing_ok=True)
            print(f"{tmp}: removed, the temp file of a history writer killed before it renamed it "
                  f"({age / 60:.0f} min old)")
        else:
            print(f"{tmp}: a history writer's temp file ({age:.0f} s old): left in place while a writer may own it")


def _import(store, folder) -> int:
    """Every run of a history folder (and its measured ceilings) into ``store``, under the same names;
    a run already there is not stored again, a damaged file is named and skipped."""
    from pathlib import Path

    from . import history
    if not folder or not Path(folder).is_dir():
        raise QuantbenchError(folder, "not a history folder", "pass the folder that holds <signature>/ folders: "
                              "quantbench history import FOLDER --history URL")
    source = history.FolderStore(folder)
    counts = {"stored": 0, "already stored": 0, "skipped": 0}
    for name in source.signatures():
        for path in source.runs(name):
            try:
                payload = source.load_raw(path)  # checked; stored as written (a schema-1 file migrates when read)
            except BadHistory as exc:
                _skipped("history import")(exc)
                counts["skipped"] += 1
                continue
            _, stored_now = store.save(payload, name=path.name)
            counts["stored" if stored_now else "already stored"] += 1
        if (peaks := source.load_peaks(name)) is not None:
            store.save_peaks(name, peaks)
    print(f"quantbench history import: {folder} -> {store.label}: "
          + ", ".join(f"{count} {what}" for what, count in counts.items()))
    return 0


def _export(store, to) -> int:
    """The store's runs written as a history folder (<signature>/<name>.json, peaks.json): every folder
    command and ``pytest-benchmark compare`` read it."""
    from pathlib import Path

    from . import history
    if not to:
        raise QuantbenchError(None, "quantbench history export needs --to FOLDER", "pass the folder to write")
    written = 0
    for name in store.signatures():
        for ref in store.runs(name):
            try:
                payload = store.load_raw(ref)
            except BadHistory as exc:
                _skipped("history export")(exc)
                continue
            history.write_atomic(Path(to) / name / store.name_of(ref), payload)
            written += 1
        if (peaks := store.load_peaks(name)) is not None:
            history.write_atomic(Path(to) / name / "peaks.json", peaks)
    print(f"quantbench history export: {written} runs from {store.label} -> {to}")
    return 0


def cmd_peaks(args) -> int:
    from . import environment
    from .bench.peaks import measure_peaks
    from .history import ceilings
    device = _device(args.device)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    measured = measure_peaks(device)
    env = environment.collect()
    measured["datasheet"] = ceilings.datasheet_peaks(env["device"].get("gpu"))
    print(json.dumps(measured, indent=1))
    if args.history:
        from . import history
        store = history.open_store(args.history)
        try:
            print(store.save_peaks(env["signature"], measured))
        finally:
            store.close()
    return 0


def cmd_report(args) -> int:
    import time
    from pathlib import Path

    from . import history, report
    start = time.perf_counter()
    if args.files:
        payload = history.load_run(args.files[0])
        out = Path(args.out) / history.signature(payload)
        written = [report.render_signature([Path(f) for f in args.files], out, _thresholds(args))]
    else:
        store = history.open_store(args.history)
        try:
            written = report.render_all(store, Path(args.out), _thresholds(args), warn=_skipped("report"))
        finally:
            store.close()
    if not written:
        print(f"quantbench report: no history under {history.redact(args.history)}; run the benchmark with "
              "--qb-history first")
        return 2
    for path in written:
        print(f"quantbench report: wrote {path}")
    print(f"quantbench report: done in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_changes(args) -> int:
    from pathlib import Path

    from . import history
    from .gate import changes
    from .report import changes as changes_report
    store = history.open_store(args.history)
    try:
        runs = changes_report.all_runs(store, _skipped("changes"))
    finally:
        store.close()
    if not runs:
        print(f"quantbench changes: no history under {history.redact(args.history)}; run the benchmark with "
              "--qb-history first")
        return 2
    since = args.since
    if since == "previous":  # the nightly: what its own run, the newest, brought
        since = Path(runs[-2][0]).name if len(runs) > 1 else None
    metrics = tuple(m.strip() for m in args.metric.split(",") if m.strip()) if args.metric else None
    series = changes.series_of(runs, metrics, args.case)
    thresholds = _thresholds(args)
    every = changes.changes_in(series, thresholds, args.min_segment)
    found = changes.new_since(every, series, thresholds, since, args.min_segment) if since else every
    longest = max((len(s.points) for s in series), default=0)
    print(f"quantbench changes: {len(runs)} runs, {len(series)} series (up to {longest} points each), "
          f"{len(found)} change point(s){' new since ' + since if since else ''}")
    short = sum(len(s.points) < 2 * args.min_segment for s in series)
    if short:
        print(f"quantbench changes: {short} of {len(series)} series have fewer than {2 * args.min_segment} runs "
              f"(two levels of --min-segment {args.min_segment}): no change point can be found in them yet")
    for change in found:
        print(changes_report.line(change))
    if args.out:  # the page holds every change point of the history, the new ones among them
        print(f"quantbench changes: wrote {changes_report.render(every, series, Path(args.out))}")
    if args.json:
        changes_report.write_json(found, Path(args.json))
        print(f"quantbench changes: wrote {args.json}")
    regressions = [c for c in found if c.regression]
    if args.fail_on_regression and regressions:
        print(f"quantbench changes: FAILED: {len(regressions)} regression change point(s)")
        return 1
    return 0


def cmd_bisect(args) -> int:
    from pathlib import Path

    import importlib

    from . import bisect
    from .paths import REPO_ROOT
    index = ([f"--index-url={args.index_url}"] if args.index_url else []) + \
        [f"--find-links={link}" for link in args.find_links] + (["--no-index"] if args.no_index else [])
    for plugin in args.plugin:  # a runtime or format registered outside quantbench: known here and in the runs
        importlib.import_module(plugin)
    plan = bisect.Plan(args.package, args.good, args.bad, args.case, args.module, args.pairs, args.rounds,
                       args.new_tokens, args.history, Path(args.cache).resolve(), index, REPO_ROOT,
                       tuple(arg for plugin in args.plugin for arg in ("-p", plugin)), args.find)
    first_bad, _ = bisect.run(plan, _thresholds(args))
    return 0 if first_bad else 1


def cmd_merge(args) -> int:
    from pathlib import Path

    from . import history
    try:
        merged = history.merge_runs([history.load_run(p) for p in args.files])
    except ValueError as exc:
        raise QuantbenchError(None, str(exc), "merge only repeats on one machine and stack; compare two "
                              "signatures with quantbench gate --allow-incomparable") from None
    print(history.write_atomic(Path(args.out), merged))
    return 0


def cmd_combine(args) -> int:
    from pathlib import Path

    from . import history
    store = history.open_store(args.history)
    try:
        if not args.files and not args.group:
            raise QuantbenchError(None, "nothing to combine", "pass run files, or --group ID")
        if args.group:
            runs = _group_runs(store, args.group)
            if len(runs) > 1:
                raise QuantbenchError(store.label, f"group {args.group} holds runs of {len(runs)} machine "
                                      "signatures", "combine one signature's shards: pass their files")
            combined = runs[0][1]
        else:
            payloads = [history.load_ref(store, store.find(f) or Path(f)) for f in args.files]
            try:
                combined = history.combine_runs(payloads)
            except ValueError as exc:
                raise QuantbenchError(None, str(exc), "combine only runs of one machine signature") from None
    finally:
        store.close()
    print(history.write_atomic(Path(args.out), combined))
    return 0


def _count(least: int):
    """argparse type: an integer >= least (0 baseline runs read as 'no earlier run', -1 reruns as 0)."""
    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {least}, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be an integer >= {least}, got {text!r}")
        return value
    return count


class _Parser(argparse.ArgumentParser):
    """argparse echoes a bad value back ("invalid choice: 'postgresql://u:pw@...'"): never its password."""

    def error(self, message):
        from .errors import redact
        super().error(redact(message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="quantbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_fixtures, _add_gate, _add_results):
        add(sub)
    return parser


def _add_fixtures(sub) -> None:
    """Checkpoints and formats: fixtures, formats, inspect."""
    fixtures = sub.add_parser("fixtures", help="synthetic model checkpoints")
    fsub = fixtures.add_subparsers(dest="fixtures_command", required=True)
    build = fsub.add_parser("build", help="build (or reuse cached) checkpoints for a spec")
    build.add_argument("--model", action="append", required=True, help="spec name or .toml path (repeatable)")
    build.add_argument("--formats", default="all")
    build.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.set_defaults(func=cmd_fixtures_build)
    fsub.add_parser("list", help="list model specs").set_defaults(func=cmd_fixtures_list)

    sub.add_parser("formats", help="list registered formats").set_defaults(func=cmd_formats)
    inspect = sub.add_parser("inspect", help="detect the format of checkpoint directories")
    inspect.add_argument("path", nargs="+")
    inspect.set_defaults(func=cmd_inspect)


def _add_gate(sub) -> None:
    gate = sub.add_parser("gate", help="fail when the current run regressed against a baseline")
    gate.add_argument("--current", default=None, help="this run: a file, a stored run's name, or 'latest' (the "
                      "newest in --history, its shards joined)")
    gate.add_argument("--group", default=None, help="gate the shards of one sharded run (--qb-shard, this --qb-group "
                      "id) as one run, once per machine signature; a shard not stored is named, its cases missing")
    gate.add_argument("--baseline", required=True,
                      help="history file(s), comma-separated; 'latest' (the newest earlier runs of this "
                           "machine signature); or 'previous' (as latest, and on the first run after an upgrade the "
                           "newest runs of the stack it replaced on this hardware, labelled with what changed)")
    gate.add_argument("--if-no-baseline", choices=("fail", "pass"), default="fail",
                      help="with 'latest' / 'previous' and no earlier run to compare with (a first night, a new "
                           "stack): fail (default) or pass with a line saying so")
    gate.add_argument("--history", default="history", help="history folder or postgresql:// URL for 'latest' / "
                      "'previous' (default: history)")
    gate.add_argument("--thresholds", default=None, help="default: fixtures/thresholds.toml")
    gate.add_argument("--fail-on", default="regressed", help="states that fail, comma-separated")
    gate.add_argument("--allow-incomparable", action="store_true",
                      help="compare runs from different machines/stacks anyway (labelled in the output)")
    gate.add_argument("--baseline-runs", type=_count(1), default=3,
                      help="with --baseline latest: how many newest runs form the baseline (default 3)")
    gate.add_argument("--confirm-rerun", type=_count(0), default=0, metavar="N",
                      help="re-run only the regressed cases up to N times; each rerun must regress again")
    gate.add_argument("--markdown", default=None, help="write a Markdown summary (for a PR comment) here")
    gate.add_argument("--paired", action="store_true",
                      help="run i of --current (a quantbench merge) and the i-th --baseline run were made together "
                           "(side by side or back to back, as nox -s gate does): test per-pair ratios")
    gate.set_defaults(func=cmd_gate)


def _add_results(sub) -> None:
    """Stored runs: export, peaks, report, merge, combine, history."""
    exp = sub.add_parser("export", help="github-action-benchmark JSON (customBiggerIsBetter/SmallerIsBetter)")
    exp.add_argument("--current", required=True, help="a history file, a stored run's name, or 'latest'")
    exp.add_argument("--history", default="history", help="history folder or postgresql:// URL")
    exp.add_argument("--out-dir", required=True)
    exp.add_argument("--thresholds", default=None)
    exp.set_defaults(func=cmd_export)

    pk = sub.add_parser("peaks", help="measure this device's copy bandwidth and matmul TFLOP/s ceilings")
    pk.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    pk.add_argument("--threads", type=int, default=None, help="torch CPU threads (the CPU suite uses 1)")
    pk.add_argument("--history", default=None, help="store under HISTORY/<signature>/peaks.json (or a "
                    "postgresql:// URL)")
    pk.set_defaults(func=cmd_peaks)

    rep = sub.add_parser("report", help="render the performance guide (Markdown + charts) per machine signature")
    rep.add_argument("--history", default="history", help="history folder or postgresql:// URL")
    rep.add_argument("--out", default="reports")
    rep.add_argument("--thresholds", default=None)
    rep.add_argument("files", nargs="*", help="render only these history files (one signature)")
    rep.set_defaults(func=cmd_report)

    chg = sub.add_parser("changes", help="change points across the whole history: since when a case got slower "
                         "or faster, by how much, and what changed there (versions, kernel)")
    chg.add_argument("--history", default="history", help="history folder or postgresql:// URL")
    chg.add_argument("--metric", default=None, help="comma-separated metrics (default: every metric)")
    chg.add_argument("--case", default="*", help="case names to read (wildcards: '*bf16*decode*')")
    chg.add_argument("--min-segment", type=_count(2), default=3, metavar="N",
                     help="the fewest runs a level may hold (default 3)")
    chg.add_argument("--since", default=None, metavar="RUN",
                     help="report only change points the history up to this run (a stored run's name) did not "
                     "hold; 'previous': the run before the newest (what the newest run brought)")
    chg.add_argument("--fail-on-regression", action="store_true",
                     help="exit 1 when a reported change point is a regression")
    chg.add_argument("--out", default=None, help="write CHANGES.md with a step chart per series that moved (every "
                     "change point of the history, whatever --since says)")
    chg.add_argument("--json", default=None, help="write the change points as JSON")
    chg.add_argument("--thresholds", default=None, help="the gate's thresholds file (each metric's direction)")
    chg.set_defaults(func=cmd_changes)

    bis = sub.add_parser("bisect", help="the first release of a library between --good and --bad at which a case "
                         "got slower or stopped running, probed in A/B pairs on this machine")
    bis.add_argument("--package", required=True, help="the library, as pip names it (e.g. transformers)")
    bis.add_argument("--good", "--old", dest="good", required=True, help="the older release (fast, for --find slower)")
    bis.add_argument("--bad", "--new", dest="bad", required=True, help="a newer release (slower, for --find slower)")
    bis.add_argument("--find", choices=("slower", "faster"), default="slower",
                     help="the first release slower than --good (default), or the first faster: the one that brought "
                     "a speedup")
    bis.add_argument("--case", required=True, help="the case's id, e.g. tiny-bf16-transformers-b1-p16-decode")
    bis.add_argument("--module", default=None, help="what a release must import (default: the package's name)")
    bis.add_argument("--pairs", type=_count(5), default=5, help="A/B pairs a probe (at least 5: the paired test "
                     "reaches p < 0.05 from 5)")
    bis.add_argument("--rounds", type=_count(3), default=10, help="measured rounds a run")
    bis.add_argument("--new-tokens", type=_count(1), default=None, help="decode tokens a round")
    bis.add_argument("--history", default="history", help="where the probes' runs are stored")
    bis.add_argument("--cache", default=".cache/quantbench/bisect", help="one folder per probed release, kept")
    bis.add_argument("--index-url", default=None, help="the registry (default: pip's)")
    bis.add_argument("--find-links", action="append", default=[], help="a folder of wheels to look in too")
    bis.add_argument("--no-index", action="store_true", help="only --find-links, no registry")
    bis.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                     help="a pytest plugin module registering the case's runtime or format (given to every run)")
    bis.add_argument("--thresholds", default=None, help="the gate's thresholds file (the case's threshold)")
    bis.set_defaults(func=cmd_bisect)

    merge = sub.add_parser("merge", help="pool the rounds of several runs of the same cases into one file")
    merge.add_argument("files", nargs="+")
    merge.add_argument("--out", required=True)
    merge.set_defaults(func=cmd_merge)

    comb = sub.add_parser("combine", help="join complementary runs (one reference run split over several "
                          "slots) into one file: each case from the newest run that measured it")
    comb.add_argument("files", nargs="*", help="history files or stored runs' names")
    comb.add_argument("--history", default="history", help="history folder or postgresql:// URL (for names, --group)")
    comb.add_argument("--group", default=None, help="combine the stored shards of this group (missing ones stated)")
    comb.add_argument("--out", required=True)
    comb.set_defaults(func=cmd_combine)

    hist = sub.add_parser("history", help="list stored runs (and --add runs measured elsewhere); import a "
                          "folder into a database; export a database as a folder")
    hist.add_argument("action", nargs="?", choices=("list", "import", "export"), default="list")
    hist.add_argument("folder", nargs="?", help="import: the history folder to load")
    hist.add_argument("--history", default="history", help="history folder or postgresql:// URL (credentials: "
                      "the URL, PG* variables or ~/.pgpass)")
    hist.add_argument("--to", default=None, help="export: the folder to write <signature>/<run>.json into")
    hist.add_argument("--add", nargs="+", default=[], metavar="FILE",
                      help="store these run files (a --benchmark-json, another machine's run) in --history first; "
                           "a run already stored is not stored again")
    hist.set_defaults(func=cmd_history)


def main(argv: list[str] | None = None) -> int:
    stay_offline()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except QuantbenchError as exc:
        print(f"quantbench: error: {exc.line()}", file=sys.stderr)
        return 2
    except OSError as exc:  # an --out that cannot be created, a full disk: the path and why, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"quantbench: error: {where}{exc.strerror or exc}. Fix: pass a writable path with enough free space "
              "(history files are written atomically: nothing half-written was left)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
