#!/usr/bin/env bash
# Pack Ray and the Python packages it needs that the GPU machine lacks, for
# Python 3.12 on x86-64 Linux, into build/gpu_deps.tar.xz (build/ is git-ignored).
#
# Run HERE (the development machine, with network to PyPI), from the repo root:
#
#     bash benchmarks/pack_ray.sh
#
# then, in a session that is lent a GPU machine, call the device tool `run` with
#
#     command: bash benchmarks/gpu_session.sh
#     carry:   ["build/gpu_deps.tar.xz"]
#     timeout_s: 600
#
# (see benchmarks/gpu_session.sh). The GPU machine has Python 3.12 with torch,
# timm, numpy, pyarrow, pandas, aiohttp, grpcio, protobuf, msgpack, click,
# filelock, requests, pyyaml, fsspec, packaging (and usually pytest), but no
# ray, boto3, pydantic or jsonschema, and no network. The .venv's ray is built
# for CPython 3.11 (its _raylet .so will not import on 3.12), so every wheel
# here is downloaded for cp312; the versions are the .venv's.
#
# Layout of the archive (unpacked by gpu_session.sh into /tmp/deps):
#   site/     ray and its missing dependencies: goes on PYTHONPATH
#   pytest/   pytest, pluggy, iniconfig, pytest-timeout, pygments: appended to
#             PYTHONPATH only where the machine has no pytest
#
# Env: PIP (default .venv/bin/pip), OUT_TAR (default build/gpu_deps.tar.xz),
# XZ_LEVEL (default 9).
set -euo pipefail
cd "$(dirname "$0")/.."

PIP=${PIP:-.venv/bin/pip}
OUT_TAR=${OUT_TAR:-build/gpu_deps.tar.xz}
XZ_LEVEL=${XZ_LEVEL:-9}
WORK=build/gpu_deps
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

# name==version, all cp312 / pure-python wheels, no dependency resolution:
# what ray core + ray.data + ray.train import that the GPU machine lacks, and
# boto3 (depthlib.storage's S3 client).
SITE_PKGS=(
  ray==2.60.0
  boto3==1.44.8 botocore==1.44.8 s3transfer==0.19.3 jmespath==1.1.0
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing_extensions==4.16.0
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  tensorboardX==2.6.5
)
PYTEST_PKGS=(pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pytest-timeout==2.4.0 pygments==2.21.0)

rm -rf "$WORK"
mkdir -p "$WORK/wheels" "$WORK/site" "$WORK/pytest" "$(dirname "$OUT_TAR")"

download() {  # dest-dir pkg...
  local dest=$1; shift
  local rc=0
  "$PIP" download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$dest" "$@" > "$WORK/pip.log" 2>&1 || rc=$?
  grep -v "is ignored: it is neither a file nor a directory" "$WORK/pip.log" || true
  return $rc
}
unpack() {  # target-dir wheel...
  local target=$1; shift
  for whl in "$@"; do
    python3 - "$whl" "$target" <<'PYEOF'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:  # extractall drops the mode bits: ray's gcs_server and raylet need +x
    for info in z.infolist():
        path = z.extract(info, sys.argv[2])
        mode = (info.external_attr >> 16) & 0o777
        if mode:
            os.chmod(path, mode)
PYEOF
  done
}

echo "downloading ${#SITE_PKGS[@]} + ${#PYTEST_PKGS[@]} wheels for cp312 ..."
download "$WORK/wheels/site" "${SITE_PKGS[@]}"
download "$WORK/wheels/pytest" "${PYTEST_PKGS[@]}"
ls -la "$WORK/wheels/site" "$WORK/wheels/pytest"
unpack "$WORK/site" "$WORK"/wheels/site/*.whl
unpack "$WORK/pytest" "$WORK"/wheels/pytest/*.whl

# Trim what neither the tests nor the benchmarks use: the Java jars, the
# dashboard's web client, RLlib, Serve, LLM, every tests folder, caches.
R="$WORK/site/ray"
rm -rf "$R/jars" "$R/dashboard/client/build" "$R/rllib" "$R/serve" "$R/llm" "$R/cpp"
find "$WORK/site" "$WORK/pytest" -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +
# the wheel's .so files keep their symbols; stripping debug info is safe and large
if command -v strip >/dev/null; then
  find "$WORK/site" -name '*.so*' -type f -exec strip --strip-debug {} + 2>/dev/null || true
  for bin in "$R"/core/src/ray/gcs/gcs_server "$R"/core/src/ray/raylet/raylet; do
    [ -f "$bin" ] && strip --strip-debug "$bin" || true
  done
fi
python3 - "$WORK/site" <<'PYEOF'
import pathlib, sys
site = pathlib.Path(sys.argv[1])
tags = [line.split(":", 1)[1].strip() for line in (next(site.glob("ray-*.dist-info")) / "WHEEL").read_text().splitlines()
        if line.startswith("Tag:")]
assert tags and all(t.startswith("cp312-cp312-") for t in tags), f"ray's wheel is not for CPython 3.12: {tags}"
print("ray wheel tags:", tags)
PYEOF
du -sh "$WORK/site" "$WORK/pytest"
rm -f "$OUT_TAR"
tar -C "$WORK" -cf - site pytest | xz -T0 "-$XZ_LEVEL" > "$OUT_TAR"
size=$(stat -c %s "$OUT_TAR")
echo "$OUT_TAR: $((size / 1024 / 1024)) MiB ($size bytes)"
if [ "$size" -gt $((60 * 1024 * 1024)) ]; then
  echo "WARNING: over 60 MiB; the device's carry limit is 64 MiB for the whole working tree" >&2
fi

# Import check under CPython 3.12 where this machine has one (pyenv often has):
# a separate 3.12 venv (build/py312check) with only what the GPU machine
# already has, then ray imported from the pack and a one-CPU Ray cluster
# started (raylet, GCS) with a small Ray Data pipeline. Skipped when no 3.12.
# PY312=/path/to/python3.12 picks one; CHECK=0 skips the check.
PY312=${PY312:-}
if [ -z "$PY312" ]; then
  for cand in "$(command -v python3.12 || true)" "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
    if [ -n "$cand" ] && [ -x "$cand" ] && "$cand" -V >/dev/null 2>&1; then PY312=$cand; break; fi
  done
fi
if [ "${CHECK:-1}" = 0 ]; then
  echo "import check skipped (CHECK=0)"
elif [ -z "$PY312" ]; then
  echo "no python3.12 here: the 3.12 import check runs on the GPU machine (gpu_session.sh step 'imports')"
else
  echo "checking the pack with $PY312 ($("$PY312" -V 2>&1)) ..."
  CHECK_VENV=build/py312check
  if [ ! -x "$CHECK_VENV/bin/python" ]; then
    "$PY312" -m venv "$CHECK_VENV"
    # what the GPU machine has and ray needs (its package list): not packed
    "$CHECK_VENV/bin/pip" install --quiet numpy pandas pyarrow aiohttp grpcio protobuf msgpack click filelock \
      requests pyyaml fsspec packaging attrs psutil python-dateutil urllib3 2>&1 \
      | grep -v "is ignored: it is neither a file nor a directory" || true
  fi
  PYTHONPATH="$PWD/$WORK/site" RAY_USAGE_STATS_ENABLED=0 timeout 300 "$CHECK_VENV/bin/python" - <<'PYEOF'
import sys
import boto3, jsonschema, pydantic
import ray, ray.data, ray.train
assert sys.version_info[:2] == (3, 12), sys.version
print("imports ok on", sys.version.split()[0], "ray", ray.__version__, "from", ray.__file__)
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
n = ray.data.range(100).map_batches(lambda b: {"id": b["id"] * 2}).sum("id")
assert n == 9900, n
ray.shutdown()
print("ray cluster and ray.data ok on 3.12")
PYEOF
fi
