#!/usr/bin/env bash
# The reference run on a CUDA machine: both stacks, the GPU generation matrix, the kernel suite
# with measured ceilings, the repeatability study (5 decode runs of bf16 and awq-gemm at batch 1
# and 16, for the coefficient of variation and an A/A gate), and the rendered guide.
#
# For a machine that already has torch (CUDA), transformers 5.x, pandas, matplotlib, pytest and
# pytest-benchmark but no registry access: put the two wheel folders that
# ../shared/offline-wheels.sh builds in .whl/{current,legacy}; each stack is installed with
# --no-index --no-deps into its own --target folder and put first on PYTHONPATH.
# Everything lands in $OUT (default results/reference): history/, reports/, bench JSON, timings.
# Matrix knobs (defaults = the full reference matrix; shrink them to fit a time budget):
#   QB_MODELS, QB_BATCH, QB_PROMPT, QB_NEW_TOKENS, QB_STACKS, QB_REPEATS
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/reference}
HIST="$OUT/history"
MODELS=${QB_MODELS:-qwen2.5-3b,mistral-7b}
BATCH=${QB_BATCH:-1,2,4,8,16,32,64}
PROMPT=${QB_PROMPT:-128,512,2048}
NEW=${QB_NEW_TOKENS:-128}
STACKS=${QB_STACKS:-current legacy}
REPEATS=${QB_REPEATS:-5}
mkdir -p "$OUT"
export QUANTBENCH_CACHE=${QUANTBENCH_CACHE:-/tmp/quantbench-cache}
start=$(date +%s)
for stack in $STACKS; do
  site=/tmp/quantbench-site-$stack
  if [ -d ".whl/$stack" ] && [ ! -d "$site" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/"$stack"/*.whl
  fi
  export PYTHONPATH="$PWD/src${site:+:$site}"
  python3 -c "import awq_ext" 2>/dev/null && echo "awq_ext: importable" || echo "awq_ext: not importable"
  python3 -m quantbench.cli peaks --history "$HIST" | tail -1
  t0=$(date +%s)
  python3 -m pytest benchmarks/test_generation.py benchmarks/test_kernels.py -p no:cacheprovider -q \
    --qb-models "$MODELS" --qb-kernel-models "$MODELS" --qb-batch "$BATCH" --qb-prompt "$PROMPT" \
    --qb-new-tokens "$NEW" --qb-history "$HIST" --benchmark-json "$OUT/bench-$stack.json" \
    --benchmark-columns=median,iqr,rounds 2>&1 | tail -40 || echo "bench($stack) exited non-zero"
  echo "bench($stack) wall s: $(( $(date +%s) - t0 ))" | tee -a "$OUT/timings.txt"
  for i in $(seq 1 "$REPEATS"); do
    python3 -m pytest benchmarks/test_generation.py -p no:cacheprovider -q --qb-models "${MODELS%%,*}" \
      --qb-formats bf16,awq-gemm --qb-batch 1,16 --qb-prompt 128 --qb-new-tokens "$NEW" -k decode \
      --benchmark-json "$OUT/repeat-$stack-$i.json" 2>&1 | tail -1
  done
  python3 - "$OUT" "$stack" "$REPEATS" <<'PY' | tee -a "$OUT/repeatability.txt"
import statistics, sys
from quantbench import history
out, stack, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
runs = [history.samples(history.load_run(f"{out}/repeat-{stack}-{i}.json")) for i in range(1, n + 1)]
for key in sorted(k for k in runs[0] if k[1] == "decode_tokens_per_s"):
    values = [r[key].value for r in runs if key in r]
    print(f"{stack} {key[0]}: decode tok/s over {len(values)} runs: mean {statistics.fmean(values):.1f}, "
          f"CV {statistics.stdev(values) / statistics.fmean(values):.4f}")
PY
  python3 -m quantbench.cli gate --current "$OUT/repeat-$stack-2.json" --baseline "$OUT/repeat-$stack-1.json" \
    --markdown "$OUT/aa-gate-$stack.md" | tail -3 || true
done
python3 -m quantbench.cli report --history "$HIST" --out "$OUT/reports"
echo "total wall s: $(( $(date +%s) - start ))" | tee -a "$OUT/timings.txt"
