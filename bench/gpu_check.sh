#!/usr/bin/env bash
# Run on a GPU machine lent by the device tool (JAX and PyTorch, no TensorFlow, no internet),
# from the repo root, after bench/gpu_wheels.sh here, with its two outputs carried (54 MiB):
#   run(command="bash bench/gpu_check.sh", carry=["bench/out/wheels", "bench/out/gpu_reference.npz"])
# Installs only what is missing, from the carried wheels, into a venv that sees the machine's
# own JAX/PyTorch; extracts the COVID-CT slices on the GPU (KERAS_BACKEND=jax when JAX sees a
# GPU, else torch); checks the features against the CPU reference; prints img/s per backbone
# and batch size. Results: $OUT/gpu_check.json (or ./gpu_check.json).
set -euo pipefail
OUT=${OUT:-.}
python3 -m venv --system-site-packages /tmp/gpu-venv
PY=/tmp/gpu-venv/bin/python
for module in keras h5py PIL click; do
  "$PY" -c "import $module" 2>/dev/null || missing="${missing:-} $module"
done
if [ -n "${missing:-}" ]; then
  echo "installing from carried wheels:${missing}"
  "$PY" -m pip install --quiet --no-index --find-links bench/out/wheels keras h5py pillow click
fi
if [ -z "${KERAS_BACKEND:-}" ]; then
  if "$PY" -c "import jax, sys; sys.exit(0 if any(d.platform == 'gpu' for d in jax.devices()) else 1)" 2>/dev/null; then
    export KERAS_BACKEND=jax
  else
    export KERAS_BACKEND=torch
  fi
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
echo "KERAS_BACKEND=$KERAS_BACKEND"
OUT="$OUT" "$PY" bench/gpu_check.py --batch-sizes "${BATCH_SIZES:-32,128,256}"
