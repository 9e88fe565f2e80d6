#!/usr/bin/env bash
# GPU path check, for a session that the device tool lends a GPU machine (none needed otherwise).
# Extracts the 746 COVID-CT images on the GPU for the offline backbones, fp32 and mixed
# precision, and records images/s and the device each run used. Run from the repo root:
#   bash bench/gpu_check.sh            (results in $OUT/gpu_check.txt, or ./gpu_check.txt)
set -euo pipefail
OUT=${OUT:-.}
DATA=${COVIDCT_DATA:-../shared/data/covid-ct}
W=../shared/keras/models
test -x .venv/bin/python || { python3 -m venv .venv && .venv/bin/pip install -q -e . "tensorflow[and-cuda]"; }
.venv/bin/python -c "import tensorflow as tf; print('GPUs:', tf.config.list_physical_devices('GPU'))" | tee "$OUT/gpu_check.txt"
for precision in fp32 mixed; do
  for spec in "mobilenetv2=$W/mobilenet_v2_1.0_224_imagenet_from_coral_tf2_ptq_no_top.h5" \
              "mobilenet=$W/mobilenet_v1_1.0_224_imagenet_from_coral_quant_no_top.h5"; do
    name=${spec%%=*}
    dir=$(mktemp -d)
    # the summary line carries the device and the seconds: images/s = 746 / seconds
    .venv/bin/python cli.py extract -b "$name" --weights "$spec" --data "$DATA" --features-dir "$dir" \
      --batch-size 128 --precision "$precision" --offline | tail -1 | sed "s/^/$precision /" | tee -a "$OUT/gpu_check.txt"
  done
done
