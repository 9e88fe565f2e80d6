#!/usr/bin/env bash
# Run here (with internet or a PyPI mirror), before a GPU check: downloads the wheels the GPU
# machine lacks (it has JAX and PyTorch, no TensorFlow and no internet) into bench/out/wheels,
# for Python 3.10-3.12 on x86_64 Linux, and writes the CPU reference features. Then carry both:
#   run(command="bash bench/gpu_check.sh", carry=["bench/out/wheels", "bench/out/gpu_reference.npz"])
set -euo pipefail
DEST=bench/out/wheels
mkdir -p "$DEST"
PY=${PY:-.venv/bin/python}
# keras and what it imports, h5py for the cache, Pillow for images, click for the CLI.
PACKAGES="keras absl-py rich markdown-it-py mdurl pygments namex optree ml-dtypes h5py pillow packaging click"
for version in 3.10 3.11 3.12; do
  "$PY" -m pip download --quiet --only-binary=:all: --no-deps --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --python-version "$version" \
    -d "$DEST" $PACKAGES
done
du -sh "$DEST"
"$PY" bench/gpu_check.py --write-reference
du -sh bench/out/gpu_reference.npz
