#!/usr/bin/env bash
# One GPU session's checks and benchmarks, in one call of the device tool.
#
# 1. HERE (the development machine), once: `bash benchmarks/pack_ray.sh`
#    -> build/gpu_deps.tar.xz (~37 MiB: ray 2.60.0 and what it needs that the
#    GPU machine lacks, built for CPython 3.12; git-ignored).
# 2. Call the device tool `run` with
#        command:   bash benchmarks/gpu_session.sh
#        carry:     ["build/gpu_deps.tar.xz"]
#        timeout_s: 600
#    Each step's log comes back as $OUT/<step>.log, plus $OUT/summary.txt
#    (machine, versions, each step's exit status and seconds). The reply's
#    output_tail holds the summary too.
#
# The GPU machine (one H200, 16 cores) has Python 3.12 with torch, timm, numpy,
# pyarrow, pandas and pytest but no ray, boto3 or network; the archive is
# unpacked into /tmp/deps and put on PYTHONPATH before the working tree.
#
# STEPS below is the list to edit: "name|timeout seconds|command". Every step
# runs under `timeout`, a failed one does not stop the next. The timeouts add
# up to 9.25 minutes (555 s), inside the tool's 10-minute limit with the unpack.
# Run one step alone: `bash benchmarks/gpu_session.sh <name> [<name> ...]`.
# Without the tool (a GPU machine of your own): OUT defaults to
# outputs/gpu_session, and DEPS_TAR / DEPS_DIR override the archive and where
# it goes.
set -uo pipefail
cd "$(dirname "$0")/.."

STEPS=(
  "imports|25|python -c 'import sys, torch, ray, ray.data, ray.train, boto3, depthlib; print(sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(0), \"ray\", ray.__version__)'"
  "pytest_gpu|120|python -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py"
  # the labelling job against the bare loop and the model alone (ratio_steady_b_over_c: goal >= 0.9)
  "pseudo_label_vitl|100|python benchmarks/pseudo_label.py --encoder vitl --images 768 --batch-size 64"
  "pseudo_label_vitl_compile|110|python benchmarks/pseudo_label.py --encoder vitl --images 768 --batch-size 64 --compile"
  # the CPU side of this 16-core node against stand-ins at the eager and the compiled ViT-L rates
  "pseudo_label_standin|60|python benchmarks/pseudo_label.py --stand-in 164 300 --images 1024"
  # training: eager at the old batch 8, then compiled at batch 32 (the memory model projects ~76 fit an H200)
  "train_step_vitl|100|python benchmarks/train_step.py --device cuda --encoder vitl --crop 518 --batch-size 8 --steps 60 --warmup 20 --peak-tflops 790; python benchmarks/train_step.py --device cuda --encoder vitl --crop 518 --batch-size 32 --steps 60 --warmup 20 --peak-tflops 790 --compile --scenes 1024"
  "train_memory_vitl|40|python benchmarks/train_memory.py --device cuda --encoder vitl --crop 518 --batch-size 32"
)

OUT=${OUT:-$PWD/outputs/gpu_session}
DEPS_TAR=${DEPS_TAR:-build/gpu_deps.tar.xz}
DEPS_DIR=${DEPS_DIR:-/tmp/deps}
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

# `python` in the steps: the machine's python3 (the one with torch) unless `python` is it
PYTHON=python3
command -v python >/dev/null && python -c 'import torch' 2>/dev/null && PYTHON=python
mkdir -p /tmp/gpu_session_bin
printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v "$PYTHON")" > /tmp/gpu_session_bin/python  # not a link: a venv's python
chmod +x /tmp/gpu_session_bin/python                                                          # finds its venv by its path
export PATH="/tmp/gpu_session_bin:$PATH"

t0=$(date +%s)
if [ -f "$DEPS_TAR" ]; then
  mkdir -p "$DEPS_DIR"
  tar -C "$DEPS_DIR" -xJf "$DEPS_TAR" && say "unpacked $DEPS_TAR into $DEPS_DIR in $(( $(date +%s) - t0 )) s"
else
  say "WARNING: no $DEPS_TAR (carry it: run's carry [\"build/gpu_deps.tar.xz\"]); steps needing ray will fail"
fi
export PYTHONPATH="$DEPS_DIR/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c 'import pytest, pytest_timeout' 2>/dev/null; then
  export PYTHONPATH="$PYTHONPATH:$DEPS_DIR/pytest"  # the packed pytest, only where the machine has none
  say "using the packed pytest"
fi
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false

say "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,utilization.gpu --format=csv 2>&1 | tee -a "$SUMMARY"
say "cores $(nproc), $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB memory"}'), /dev/shm $(df -h /dev/shm 2>/dev/null | awk 'NR==2 {print $2}')"
say "$("$PYTHON" -V 2>&1) at $(command -v "$PYTHON"); git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
"$PYTHON" - <<'EOF' 2>&1 | tee -a "$SUMMARY"
import importlib
for name in ("torch", "timm", "numpy", "pyarrow", "pandas", "ray", "boto3", "pydantic", "pytest"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '?')}  {m.__file__}")
    except Exception as e:
        print(f"{name}: {type(e).__name__}: {e}")
EOF

wanted=("$@")
say "== steps"
for entry in "${STEPS[@]}"; do
  IFS='|' read -r name limit cmd <<< "$entry"
  if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " == *" $name "* ]]; then
    continue
  fi
  log=$OUT/$name.log
  echo "\$ $cmd" > "$log"
  s=$(date +%s)
  timeout -k 10 "$limit" bash -c "$cmd" >> "$log" 2>&1
  rc=$?
  took=$(( $(date +%s) - s ))
  case $rc in
    0) status=ok ;;
    124|137) status="TIMEOUT after ${limit} s" ;;
    *) status="FAILED rc=$rc" ;;
  esac
  say "$(printf '%-26s %-22s %4d s' "$name" "$status" "$took")"
  if [ $rc -ne 0 ]; then
    tail -n 15 "$log" | sed 's/^/    | /' | tee -a "$SUMMARY"
  fi
  if [ $rc -ne 0 ]; then  # a killed step can leave its local Ray cluster running: stop it
    timeout 30 "$PYTHON" -m ray.scripts.scripts stop --force >/dev/null 2>&1 || true
  fi
done
say "== total $(( $(date +%s) - t0 )) s; logs in $OUT"
