#!/usr/bin/env bash
# The reference run on a CUDA machine, in stages that each fit a short slot on a lent machine:
#   tools/reference_run.sh STAGE [STAGE ...]
# Stages (default: all, in this order):
#   plan     print each pytest stage's cases and predicted wall time against QB_STAGE_TIMEOUT (runs nothing,
#            needs no GPU: pytest --qb-plan cuda); `tools/reference_run.sh plan sweep formats` plans those stages
#   setup    install a stack's wheels (offline) and probe AutoAWQ's awq_ext on this torch
#   build    build the checkpoints every later stage reads (quantbench fixtures build --device cuda), in a
#            stage of its own: a GPTQ calibration or a torchao quantization never eats a benchmark stage's slot
#   gptq     build gptqmodel's CUDA kernels (AWQ GEMM/GEMV, Marlin, Machete) with nvcc, each timed
#   peaks    measure the device ceilings (copy bandwidth, bf16/fp16 matmul) into the history
#   sweep    decode/prefill over the batch sweep for the formats the seed asks about
#   formats  every other registered format at two batch sizes
#   compile  decode with torch.compile + CUDA graphs (the +compile formats) beside bf16 eager, two batch sizes
#   vllm     the seed's formats through vLLM's engine (compiled and eager) beside transformers, two batch
#            sizes (needs vllm importable: the image or a stack installed with it; else every case states why)
#   serve    the same checkpoints behind vLLM's OpenAI server under load from vLLM's client, concurrency
#            1..256 (benchmarks/test_serving.py; needs vllm importable, like the vllm stage)
#   hf       the AWQ checkpoints through transformers + gptqmodel, one format per kernel (GEMM vs GEMV at 1 and 8)
#   prompts  longer prompts for bf16, awq-gemm and ct-w4a16
#   kernels  the GEMM/GEMV kernel suite over the specs' (K, N) shapes and the full M sweep
#   repeat   decode of bf16 and awq-gemm at batch 1 and 16, QB_REPEATS times (CV and A/A gate)
#   report   CV table, A/A gate and the rendered guide (runs anywhere, no GPU needed)
#
# For a machine with torch (CUDA), transformers 5.x, pandas, matplotlib, pytest and pytest-benchmark
# but no registry access: ../shared/offline-wheels.sh builds the wheel folders .whl/{current,legacy};
# a stack is installed with --no-index --no-deps into its own --target folder, first on PYTHONPATH.
# An autoawq-kernels build (its awq_ext*.so files, zipped) may sit in .whl/awq-kernels/*.zip: setup
# puts it beside the stack and keeps it only if awq_ext imports AND computes the right GEMM/GEMV.
# gptqmodel (transformers 5.x's AWQ runtime) comes from .whl/gptq (tools/gptq-wheels.sh) into the current
# stack; its CUDA kernels are built on the machine (nvcc) into QB_STATE/torch_extensions, kept between stages.
# Machete also needs a CUTLASS source checkout (v4.7.1 for gptqmodel 7.5.0) in .whl/cutlass: without it, stated unsupported.
#
# State (built checkpoints, stacks, history) lives in QB_STATE so stages can run in separate
# commands; every stage copies what it produced to $OUT (default results/reference).
# Knobs: QB_STACK (current|legacy), QB_MODEL, QB_KERNEL_MODELS, QB_NEW_TOKENS, QB_ROUNDS,
#        QB_REPEATS, QB_STAGE_TIMEOUT (seconds per pytest stage; SIGINT, so JSON is still written),
#        QB_REPEAT_FIRST (first repeat index, to spread the repeats over several slots),
#        QB_SWEEP_FORMATS, QB_OTHER_FORMATS, QB_COMPILE_FORMATS, QB_COMPILE_BATCH, QB_HF_FORMATS, QB_HF_BATCH,
#        QB_GPTQ_EXTENSIONS, QB_KERNELS, QB_BATCH, QB_DEADLINE (epoch seconds: later pytest stages shrink or skip to end before it),
#        QB_NO_SHARDS (run each stage whole instead of as the slot-sized shards SLOTS below deals it into)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/reference}
STATE=${QB_STATE:-/tmp/quantbench-reference}
STACK=${QB_STACK:-current}
MODEL=${QB_MODEL:-qwen2.5-3b}
KERNEL_MODELS=${QB_KERNEL_MODELS:-qwen2.5-3b,mistral-7b}
NEW=${QB_NEW_TOKENS:-128}
ROUNDS=${QB_ROUNDS:-5}
REPEATS=${QB_REPEATS:-5}
# A lent GPU runner gives 10-minute commands: a stage ends (SIGINT, then --qb-deadline inside pytest) within 540 s
LIMIT=${QB_STAGE_TIMEOUT:-540}
PLAN=0
HIST="$STATE/history"
SITE="$STATE/site-$STACK"
mkdir -p "$OUT" "$STATE"
export QUANTBENCH_CACHE="$STATE/cache"
export PYTHONPATH="$PWD/src:$SITE"
export PYTHONUNBUFFERED=1
# gptqmodel's nvcc builds, reused by later stages: gptqmodel reads its own variable (gptqmodel/utils/cpp.py,
# default ~/.cache/gptqmodel/torch_extensions), torch's JIT loader the other
export GPTQMODEL_TORCH_EXTENSIONS_DIR="$STATE/torch_extensions"
export TORCH_EXTENSIONS_DIR="$STATE/torch_extensions"
if command -v nvidia-smi >/dev/null && [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  # build for this GPU only (nvcc time); gptqmodel adds the sm_90a target Machete needs itself
  TORCH_CUDA_ARCH_LIST=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' ')
  export TORCH_CUDA_ARCH_LIST
fi
if [ -z "${GPTQMODEL_CUTLASS_DIR:-}" ] && [ -d .whl/cutlass/include/cutlass ]; then
  # gptqmodel's Machete is built from CUTLASS source; quantbench keeps gptqmodel offline, so bring a checkout
  export GPTQMODEL_CUTLASS_DIR="$PWD/.whl/cutlass"
fi
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/timings.txt"; }

remaining() {  # seconds a stage may run (QB_STAGE_TIMEOUT, cut to end 40 s before QB_DEADLINE)
  local limit=$LIMIT
  if [ -n "${QB_DEADLINE:-}" ]; then
    limit=$(( QB_DEADLINE - $(date +%s) - 40 ))
    [ "$limit" -gt "$LIMIT" ] && limit=$LIMIT
  fi
  echo "$limit"
}

# Slots per stage: a stage whose cases do not fit one slot is dealt into shards (--qb-shard, whole checkpoints
# together), each run as its own stage NAME:I (`tools/reference_run.sh vllm:2`); `plan` shows each one's time.
declare -A SLOTS=([sweep]=3 [compile]=3 [hf]=2 [formats]=4 [prompts]=2 [kernels]=2 [vllm]=8 [serve]=6)
SHARD=""  # I/N of the stage being run, set by the main loop

bench() {  # bench NAME PYTEST-ARGS...: one pytest run, ended by its own --qb-deadline before the stage limit
  local name=$1; shift
  local t0=$SECONDS limit
  if [ -n "$SHARD" ]; then
    name="$name-s${SHARD%/*}"
    set -- "$@" --qb-shard "$SHARD" --qb-group "reference-$STACK-${name%-s*}"
  fi
  if [ "$PLAN" = 1 ]; then  # the stage's cases and predicted seconds, each of its shards a slot, nothing run
    python3 -m pytest -p no:cacheprovider -q --qb-plan cuda --qb-plan-slots "${PLAN_SLOTS:-1}" "$@" \
      > "$OUT/plan-$name.txt" 2>&1
    local line shard
    grep '^quantbench plan' "$OUT/plan-$name.txt" | while read -r line; do
      shard=$(echo "$line" | sed -n 's/^quantbench plan (cuda) shard \([0-9]*\)\/.*/\1/p')
      echo "plan $name${shard:+-s$shard}: ${line#*: }"
    done
    grep -q '^quantbench plan' "$OUT/plan-$name.txt" || echo "plan $name: FAILED: $(tail -n 3 "$OUT/plan-$name.txt")"
    return
  fi
  limit=$(remaining)  # QB_DEADLINE: epoch seconds by which every stage must have written its JSON
  if [ "$limit" -lt 30 ]; then log "$name ($STACK): skipped, no time left before QB_DEADLINE"; return; fi
  # pytest ends itself 45 s before the limit (the running case finishes within its budget, the rest are stated
  # not-reached, the JSON and history are written); SIGINT at the limit is the fallback
  timeout -s INT -k 30 "$limit" python3 -m pytest -p no:cacheprovider -q -rs --benchmark-columns=median,iqr,rounds \
    --qb-deadline "$(( limit > 90 ? limit - 45 : limit / 2 ))" \
    --qb-history "$HIST" --benchmark-json "$OUT/$name.json" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  if [ ! -s "$OUT/$name.json" ] && [ -f "$OUT/$name.json.journal.jsonl" ]; then
    # killed before pytest-benchmark wrote its JSON: the cases it finished are in the journal
    python3 -m quantbench.cli history --history "$HIST" --add "$OUT/$name.json.journal.jsonl" 2>&1 | tail -n 2
  fi
  tail -n 25 "$OUT/$name.log"
  log "$name ($STACK): rc $rc, wall s $((SECONDS - t0))"
}

stage_setup() {
  if [ ! -d "$SITE" ] && [ -d ".whl/$STACK" ]; then
    local wheels=(.whl/"$STACK"/*.whl)
    # gptqmodel needs transformers 5.x: the current stack only
    [ "$STACK" = current ] && [ -d .whl/gptq ] && wheels+=(.whl/gptq/*.whl)
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "${wheels[@]}"
  fi
  python3 -c "import awq, compressed_tensors, transformers, torch; print('stack', '$STACK', 'torch', torch.__version__, \
'transformers', transformers.__version__, 'compressed-tensors', compressed_tensors.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" | tee -a "$OUT/timings.txt"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.limit \
    --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
  local zip
  zip=$(ls .whl/awq-kernels/*.zip 2>/dev/null | head -1)
  if [ -n "$zip" ] && [ ! -e "$SITE/.awq-probed" ]; then
    python3 -m zipfile -e "$zip" "$SITE" >/dev/null
    # A crash or a wrong answer here must not take the benchmarks down with it: probe in a child.
    timeout 300 python3 - > "$OUT/awq_ext-probe-$STACK.txt" 2>&1 <<'PY'
import torch, traceback
try:
    import awq_ext  # noqa: F401
    print("awq_ext: imported from", awq_ext.__file__)
except Exception as exc:
    print("awq_ext: import failed:", type(exc).__name__, str(exc)[:400]); raise SystemExit(3)
from quantbench import kernels
dev = torch.device("cuda")
for name in ("awq-gemm-awq_ext", "awq-gemv"):
    kernel = kernels.KERNELS[name]
    try:
        prep = kernel.prepare(4096, 4096, dev, 1)
        for m in (1, 8, 64):
            x = torch.randn(m, 4096, device=dev, dtype=torch.float16)
            err = kernels.rel_err(prep.call(x, prep.copies[0]), x.float() @ prep.reference_weight.t())
            print(f"{name} M={m}: rel err {err:.3g} (bound {kernels.tolerance(kernel)})")
            if not err <= kernels.tolerance(kernel):
                raise SystemExit(4)
    except SystemExit:
        raise
    except Exception:
        traceback.print_exc(); raise SystemExit(5)
PY
    local rc=$?
    cat "$OUT/awq_ext-probe-$STACK.txt"
    if [ $rc -ne 0 ]; then
      rm -f "$SITE"/awq_ext*.so "$SITE"/awq_v2_ext*.so
      echo "awq_ext removed again (probe exit $rc): GEMM runs on Triton, GEMV/fused are unsupported" \
        | tee -a "$OUT/awq_ext-probe-$STACK.txt"
    fi
    touch "$SITE/.awq-probed"
  fi
}

stage_build() {
  local limit; limit=$(remaining)
  if [ "$limit" -lt 30 ]; then log "build ($STACK): skipped, no time left before QB_DEADLINE"; return; fi
  local models="$MODEL"
  [ -n "${QB_BUILD_MODELS:-}" ] && models=$QB_BUILD_MODELS
  local model
  for model in ${models//,/ }; do
    timeout -k 10 "$limit" python3 -m quantbench.cli fixtures build --model "$model" --device cuda \
      --formats "${QB_BUILD_FORMATS:-all}" 2>&1 | tail -n 30 | tee -a "$OUT/build-$STACK.txt"
  done
}

stage_plan() {  # every pytest stage named after `plan` (default: all of them), planned, not run
  PLAN=1
}

stage_peaks() {
  python3 -m quantbench.cli peaks --history "$HIST" 2>&1 | tail -3
}

stage_sweep() {
  bench "sweep-$STACK" benchmarks/test_generation.py --qb-models "$MODEL" \
    --qb-formats "${QB_SWEEP_FORMATS:-bf16,awq-gemm,ct-w4a16,awq-gemv,awq-gemm-fused}" --qb-batch "${QB_BATCH:-1,2,4,8,16,32,64}" \
    --qb-prompt 128 --qb-new-tokens "$NEW" --qb-rounds "$ROUNDS"
}

# GPTQ (gptqmodel's pick and its CUDA kernels), bitsandbytes and torchao: the current stack's wheels (.whl/gptq)
NEW_FAMILIES="gptq,gptq-torch,gptq-triton,gptq-marlin,gptq-exllamav2,gptq-machete,gptq-desc-act,bnb-nf4,bnb-nf4-dq,bnb-int8"
NEW_FAMILIES+=",torchao-int4wo,torchao-int8da8w"

stage_formats() {
  bench "formats-$STACK" benchmarks/test_generation.py --qb-models "$MODEL" \
    --qb-formats "${QB_OTHER_FORMATS:-fp16,ct-w4a16-dequant,ct-w4a16-nodispatch,ct-w4a16-bare,ct-w8a16,ct-w8a8,ct-fp8,$NEW_FAMILIES}" \
    --qb-batch 1,16 \
    --qb-prompt 128 --qb-new-tokens "$NEW" --qb-rounds "$ROUNDS"
}

stage_compile() {
  bench "compile-$STACK" benchmarks/test_generation.py --qb-models "$MODEL" \
    --qb-formats "${QB_COMPILE_FORMATS:-bf16,bf16+compile,awq-gemm+compile,awq-gemm-hf+compile,ct-w4a16+compile,ct-w4a16-bare+compile,gptq+compile,torchao-int4wo+compile,torchao-int8da8w+compile}" \
    --qb-batch "${QB_COMPILE_BATCH:-1,16}" --qb-prompt 128 --qb-new-tokens "$NEW" --qb-rounds "$ROUNDS" -k decode
}

stage_vllm() {
  bench "vllm-$STACK" benchmarks/test_generation.py --qb-models "$MODEL" \
    --qb-formats "${QB_VLLM_FORMATS:-bf16,awq-gemm,ct-w4a16,ct-w8a8,ct-fp8,gptq,bnb-nf4,torchao-int8da8w}" \
    --qb-runtimes "${QB_VLLM_RUNTIMES:-transformers,vllm,vllm+eager}" \
    --qb-batch "${QB_VLLM_BATCH:-1,16}" --qb-prompt 128 --qb-new-tokens "$NEW" --qb-rounds "$ROUNDS"
}

stage_serve() {
  # each format's server serves every concurrency in a row; 2 kept rounds a point keep the sweep within a slot
  bench "serve-$STACK" benchmarks/test_serving.py --qb-models "$MODEL" \
    --qb-formats "${QB_SERVE_FORMATS:-bf16,awq-gemm,ct-w4a16,ct-w8a8,ct-fp8,gptq}" --qb-runtimes vllm-serve \
    --qb-serve-concurrency "${QB_SERVE_CONCURRENCY:-1,4,16,64,256}" --qb-rounds "${QB_SERVE_ROUNDS:-2}" \
    --qb-serve-keep "$OUT/serve-$STACK-client"
}

stage_gptq() {
  # gptqmodel builds each CUDA kernel with nvcc on first use; built here, timed, a benchmark's load time
  # holds no compile and a failed build is on record with its error (the formats then state it).
  local limit; limit=$(remaining)
  if [ "$limit" -lt 30 ]; then log "gptq ($STACK): skipped, no time left before QB_DEADLINE"; return; fi
  # gptqmodel's cold-build baselines (gptqmodel/utils/jit_compile_baselines.py): awq 62 s, marlin_fp16 117 s
  # (its bf16 twin another 121 s: the AWQ formats load fp16, so it is not built); machete needs CUTLASS source.
  timeout -k 10 "$limit" python3 - "${QB_GPTQ_EXTENSIONS:-awq,marlin_fp16,machete}" <<'PY' 2>&1 | grep -v "^\s*$" \
    | tail -n 40 | tee -a "$OUT/gptq-build-$STACK.txt"
import sys, time
from quantbench.formats.gptqmodel import import_gptqmodel
import_gptqmodel()
from gptqmodel import extension
for name in sys.argv[1].split(","):
    start = time.time()
    try:
        extension.load(name)
        print(f"gptqmodel extension {name}: ready in {time.time() - start:.0f} s")
    except Exception as exc:  # a failed build is a result: record it, go on with the next
        print(f"gptqmodel extension {name}: FAILED after {time.time() - start:.0f} s: {str(exc)[:1500]}")
PY
  log "gptq ($STACK): TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-} extensions in $GPTQMODEL_TORCH_EXTENSIONS_DIR"
}

stage_hf() {
  bench "hf-$STACK" benchmarks/test_generation.py --qb-models "$MODEL" \
    --qb-formats "${QB_HF_FORMATS:-bf16,awq-gemm-hf,awq-gemm-hf-gemm,awq-gemv-hf,awq-gemm-hf-marlin,awq-gemm-hf-machete,awq-gemm-hf-triton}" \
    --qb-batch "${QB_HF_BATCH:-1,8,16}" --qb-prompt 128 --qb-new-tokens "$NEW" --qb-rounds "$ROUNDS"
}

stage_prompts() {
  bench "prompts-$STACK" benchmarks/test_generation.py --qb-models "$MODEL" \
    --qb-formats bf16,awq-gemm,ct-w4a16 --qb-batch 1,8 --qb-prompt 512,2048 \
    --qb-new-tokens "$NEW" --qb-rounds "$ROUNDS"
}

stage_kernels() {
  bench "kernels-$STACK" benchmarks/test_kernels.py --qb-kernel-models "$KERNEL_MODELS" \
    --qb-kernels "${QB_KERNELS:-all}" --qb-rounds "${QB_KERNEL_ROUNDS:-10}"
}

stage_repeat() {
  local i
  for i in $(seq "${QB_REPEAT_FIRST:-1}" "$REPEATS"); do
    bench "repeat-$STACK-$i" benchmarks/test_generation.py --qb-models "$MODEL" --qb-formats bf16,awq-gemm \
      --qb-batch 1,16 --qb-prompt 128 --qb-new-tokens "$NEW" --qb-rounds "$ROUNDS" -k decode
  done
}

stage_report() {
  python3 tools/repeatability.py "$OUT"/repeat-"$STACK"-*.json | tee "$OUT/repeatability-$STACK.txt"
  python3 -m quantbench.cli gate --baseline "$OUT/repeat-$STACK-1.json" --current "$OUT/repeat-$STACK-2.json" \
    --markdown "$OUT/aa-gate-$STACK.md" 2>&1 | tail -4
  python3 -m quantbench.cli report --history "$HIST" --out "$OUT/reports" 2>&1 | tail -3
}

stages=("$@")
ALL_STAGES=(setup build gptq peaks sweep compile hf formats prompts kernels vllm serve repeat report)
[ ${#stages[@]} -eq 0 ] && stages=(setup build gptq peaks sweep compile hf formats prompts kernels repeat report)
[ "${stages[*]}" = plan ] && stages=(plan "${ALL_STAGES[@]}")
[ "${stages[0]}" = plan ] && PLAN=1
expanded=()
for stage in "${stages[@]}"; do  # a sharded stage named whole is each of its shards in turn
  slots=${SLOTS[$stage]:-1}
  if [ "$PLAN" = 1 ] || [ "$stage" = plan ]; then  # planned whole: one collection deals every shard
    expanded+=("$stage")
  elif [ "$slots" -gt 1 ] && [ -z "${QB_NO_SHARDS:-}" ]; then  # QB_NO_SHARDS=1: each stage whole, in one run
    for i in $(seq 1 "$slots"); do expanded+=("$stage:$i"); done
  else
    expanded+=("$stage")
  fi
done
for stage in "${expanded[@]}"; do
  SHARD=""
  if [[ $stage == *:* ]]; then
    SHARD="${stage#*:}/${SLOTS[${stage%%:*}]:-1}"
    stage=${stage%%:*}
  fi
  if [ "$PLAN" = 1 ]; then
    PLAN_SLOTS=${SLOTS[$stage]:-1}
    [ -n "${QB_NO_SHARDS:-}" ] && PLAN_SLOTS=1
    case $stage in
      plan) ;;
      setup|build|gptq|peaks|report) echo "plan $stage: runs its own commands, no pytest cases (bounded by $LIMIT s)";;
      *) "stage_$stage";;
    esac
    continue
  fi
  t0=$SECONDS
  log "stage $stage${SHARD:+ shard $SHARD} ($STACK) begins"
  "stage_$stage"
  log "stage $stage${SHARD:+ shard $SHARD} ($STACK) done in $((SECONDS - t0)) s"
  # History goes with every stage, so a slot that ends early still brings back what was measured.
  if [ -d "$HIST" ]; then cp -r "$HIST" "$OUT/" 2>/dev/null; fi
done
