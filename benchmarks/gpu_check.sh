#!/usr/bin/env bash
# GPU checks for a machine with an NVIDIA GPU (issue 9): the stream benchmark on the device, then short
# bf16 trainings of ConVIRT (ViT-B/16) and SimMIM (SwinV2-T) fed by TileStream, printing samples/s, the
# fraction of step time spent waiting for data, and model FLOP utilisation. See docs/distributed.md.
#
#   benchmarks/gpu_check.sh [extra options of `domainfm bench gpu`, e.g. --steps 50 --peak_tflops 989]
#
# Uses .venv (made by `make test` or `make quickstart`) when present, else the python on PATH with
# domainfm installed. On a machine without a GPU it reports that none was found and exits 0.
# Results go to stdout as JSON and to gpu_check.json (or $OUT/gpu_check.json when OUT is set).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
if ! "$PYTHON" -c "import domainfm" 2>/dev/null; then
    echo "domainfm is not importable with $PYTHON: run 'make test' (creates .venv) or 'pip install -e .[all]'" >&2
    exit 2
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '| GPUs', torch.cuda.device_count())"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
RESULT="${OUT:-.}/gpu_check.json"
"$PYTHON" -m domainfm bench gpu --json "$@" | tee "$RESULT.partial"
mv "$RESULT.partial" "$RESULT"
