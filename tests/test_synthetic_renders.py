"""Seeded renders pinned byte for byte: sha256 of the image and depth of a few scenes per style.

A refactor of ``depthlib.synthetic`` (moving code between modules, renaming
helpers) must leave every seeded render identical, and this test says so at
once: each case below is ``render_scene(seed, 40, 56, style)`` hashed as
dtype, shape and raw bytes. The seeds cover an outdoor scene with haze, a
room and an outdoor scene without haze (synthetic); outdoor scenes with
clouds and a room with a planked or tiled floor (photo); three streets.

Why the renders run in a child process: the bytes depend on which SIMD
kernels the CPU gets. numpy picks float32 kernels (exp, sqrt, ...) by CPU
feature, and OpenBLAS picks its sgemm kernel the same way; the same code
renders other depth bits with AVX2 disabled (measured). So the child limits
numpy to x86-64-v3 dispatch (AVX2, FMA3: no AVX-512 kernels) and OpenBLAS to
its Haswell kernels, the set these hashes were recorded with (numpy 2.4.6,
OpenBLAS 0.3.31, glibc's libm); a machine that cannot run that set skips.

When a render is meant to change, record the new hashes from the old and
the new code on the same machine, look at the images, and paste the table
that this prints::

    NPY_ENABLE_CPU_FEATURES=X86_V3 OPENBLAS_CORETYPE=Haswell .venv/bin/python tests/test_synthetic_renders.py
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PINNED_ENV = {"NPY_ENABLE_CPU_FEATURES": "X86_V3", "OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_NUM_THREADS": "1"}
SIZE = (40, 56)  # height, width: small, and not square so that a swapped axis shows

# (style, seed): (sha256 of the image, sha256 of the depth)
EXPECTED = {
    ("synthetic", 0): ("867d3bfdf4174b728caa4f68a6e77ab08676a8fbb9a24d21cd2d911283a792cf",
                       "fcf1837b73c87f7eb3d5c72b60a30edb3b2b7fc272f0710814e924004300bbc9"),
    ("synthetic", 4): ("c771789d8c4452f2d79ecd40c404ca7d42ca6363cb07d42ffc386b82d2698037",
                       "774d3003224b99e7e7e20bc0735754767c7ee452dc1491693c15075cc21e727e"),
    ("synthetic", 9): ("8f5841d1e70aa80d76dab21711e143b23322c89147d3cb023550e44d8c180fbe",
                       "787ee738f27cf42a12e2ef6bc49c20bd875c076b2a5e0c9ff31f06fe6c583980"),
    ("photo", 0): ("6c122887ae628049bd5364139323cb60c5ba3a97a9420809577d32a6a73d5888",
                   "d137921920e5813dd924c67960faf48cbb678e294d358eed37af2e12b525fb91"),
    ("photo", 1): ("7f9178817748a3f4e84034b5be2c4f4d6b685c46817e58f01fd26f849f102207",
                   "9484247d6d98d5d6fb878f4471617f66485c254dc436932e6598cb1d0b72d6ea"),
    ("photo", 9): ("824c9c0aa11530e0035e07c6186b20c680276ec0ecb1063e460dc0acb5e02c90",
                   "a19392af17b95d7ddf8aa74889371b35aaf941b97865def0fc1a07b4072c6519"),
    ("street", 0): ("818d10e8dfa39ba81d77c6e87a9081b2c5250d773dbbeadeee1cb88870ba7684",
                    "a8ca4f6ad939103a2e76a818c14efcf3c18a4bd975e2a834b371643725c2fbc1"),
    ("street", 1): ("4516e346d47e0f5cd4fde65bc43ea59dd048fc35855bf05166711f1c02c922fa",
                    "04278eda8dd9177a40ab2c58d26d81f3ab9c34bcbc0eabab50c97ce3d11f623c"),
    ("street", 2): ("e0ec866a01341092cf54377adb0e74981333ecc0be84cabac2ba4e7cf2a0d34b",
                    "f42257baaa28dda8253f9b2f97e70789c46ce6a3895e2db827a4c6f136fe4657"),
}


def _digest(a) -> str:
    import numpy as np

    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()


def render_hashes() -> dict:
    """``{"style/seed": [image sha256, depth sha256]}`` for every case of :data:`EXPECTED`."""
    from depthlib.synthetic import render_scene

    out = {}
    for style, seed in EXPECTED:
        scene = render_scene(seed, *SIZE, style)
        out[f"{style}/{seed}"] = [_digest(scene.image), _digest(scene.depth)]
    return out


def test_seeded_renders_are_byte_identical():
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("hashes recorded with x86-64 SIMD kernels")
    env = {k: v for k, v in os.environ.items() if k != "NPY_DISABLE_CPU_FEATURES"}  # would clash with the pin
    env.update(PINNED_ENV, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, __file__, "--json"], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0 and "cannot enable CPU features" in proc.stderr:
        pytest.skip("this CPU lacks x86-64-v3 (AVX2, FMA3), the kernels the hashes were recorded with")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    changed = []
    for (style, seed), want in EXPECTED.items():
        diff = [name for name, g, e in zip(("image", "depth"), got[f"{style}/{seed}"], want) if g != e]
        if diff:
            changed.append(f"{style}/{seed}: {' and '.join(diff)}")
    assert not changed, f"seeded renders changed: {changed}"


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    hashes = render_hashes()
    if "--json" in sys.argv:
        print(json.dumps(hashes))
    else:
        for key, (image, depth) in hashes.items():
            style, seed = key.split("/")
            pad = " " * (len(style) + 14)
            print(f'    ("{style}", {seed}): ("{image}",\n{pad}"{depth}"),')
