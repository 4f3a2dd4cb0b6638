#!/usr/bin/env bash
# The GPU ladder: every decode path of `kvviz bench` on the default model at 1,000 tokens in bfloat16, the
# torch.compile variant of the graphs path, and the Memory page's live check (cache bytes and the CUDA allocator's
# growth against the formula). Needs a CUDA GPU and the project's requirements; writes JSON into OUT_DIR.
#   scripts/gpu_ladder.sh [OUT_DIR]      (PYTHON=python3 by default)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-bench-results/gpu}
PY=${PYTHON:-python3}
TOKENS=${TOKENS:-1000}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT_DIR/gpu.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__)" | tee -a "$OUT_DIR/gpu.txt"

echo "== every path, $TOKENS tokens, bfloat16"
timeout 330 $PY -m kvviz bench --model smollm2-135m --device "$DEVICE" --dtype "$DTYPE" --tokens "$TOKENS" \
  --repeats 1 --naive-repeats 1 --quiet --json "$OUT_DIR/smollm2-$DEVICE-$DTYPE.json"

echo "== live cache against the formula (bytes held, CUDA allocator growth)"
timeout 90 $PY - "$OUT_DIR/live-check.json" "$DEVICE" "$DTYPE" <<'PY'
import json, sys
from kvviz.live_check import measure_live_cache
from kvviz.models import load_model
loaded = load_model("smollm2-135m", device=sys.argv[2], dtype=sys.argv[3])
for prompt, new in ((256, 32), (1024, 64)):
    check = measure_live_cache(loaded, prompt_tokens=prompt, new_tokens=new)
    print(check.sentence(), "| allocator growth", check.allocator_growth, "error", check.allocator_error)
    with open(sys.argv[1], "a") as handle:
        handle.write(json.dumps(check.to_dict()) + "\n")
PY

echo "== graphs after torch.compile, $TOKENS tokens"
timeout 200 $PY -m kvviz bench --model smollm2-135m --device "$DEVICE" --dtype "$DTYPE" --tokens "$TOKENS" \
  --paths dynamic,graphs --graphs-compile --repeats 1 --quiet --json "$OUT_DIR/smollm2-$DEVICE-$DTYPE-compile.json"
