#!/bin/bash
# The GPU checks in one time-boxed pass, for a GPU held only minutes (README, "On a GPU", has what they gave):
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]      # ~9 minutes on one H100 or H200; OUT_DIR: runs/gpu_check
#
# 1. the CUDA tests (tests/test_packing.py -k cuda);
# 2. 30-step probes of RECIPE (music_abc_gpu.json) in fp32, in bf16, and, where bf16 is under half as fast,
#    in bf16 through eager attention (which says whether the packed attention is the slow part);
# 3. the documented recipe for 2 steps as the README's main command runs it (bf16, 8-bit AdamW);
# 4. RECIPE for as many of its steps as fit by END_TRAIN, in the faster precision, then evaluate_checkpoints.py over
#    its final model: bits per character, and the own and constrained tunes of 64 held-out prompts.
# END_TRAIN and END_ALL are seconds from the start; each stage is cut off in time and logs to OUT_DIR.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
END_TRAIN=${END_TRAIN:-430}
END_ALL=${END_ALL:-570}
PROBE_STEPS=${PROBE_STEPS:-30}
MIN_STEPS=${MIN_STEPS:-50}
RECIPE=${RECIPE:-recipes/music_abc_gpu.json}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

echo "== [$(elapsed)s] versions"
python3 - <<'EOF'
import importlib.metadata as md, torch
print("torch", torch.__version__, "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")
print(", ".join(f"{name} {md.version(name)}" for name in ("transformers", "datasets", "accelerate", "peft", "evaluate", "bitsandbytes")))
EOF

echo "== [$(elapsed)s] CUDA tests"
timeout 90 python3 -m pytest tests/test_packing.py -k cuda -n 0 -q -rs 2>&1 | tail -6

probe() {  # NAME FLAGS...: PROBE_STEPS steps of RECIPE, no evaluation, nothing saved
  local name=$1; shift
  echo "== [$(elapsed)s] probe $name: $*"
  timeout "${PROBE_TIMEOUT:-100}" python3 run_finetune.py "$RECIPE" --output_dir "$OUT/probe_$name" --max_steps "$PROBE_STEPS" \
    --eval_strategy no --save_strategy no --logging_steps 10 --report_to none "$@" > "$OUT/probe_$name.log" 2>&1
  echo "exit $?, $(rate "$name") steps/s"
}
rate() { python3 -c "import json; print(json.load(open('$OUT/probe_$1/train_results.json'))['train_steps_per_second'])" 2>/dev/null || echo 0; }
faster() { python3 -c "import sys; sys.exit(0 if $1 > $2 else 1)"; }

probe fp32 --bf16 false
PROBE_TIMEOUT=70 probe bf16 --bf16 true
R32=$(rate fp32); R16=$(rate bf16)
PRECISION="--bf16 false"; RATE=$R32
if faster "$R16" "1.1 * $R32"; then PRECISION="--bf16 true"; RATE=$R16; fi
if faster "0.5 * $R32" "$R16"; then PROBE_STEPS=12 PROBE_TIMEOUT=50 probe bf16_eager --bf16 true --attn_implementation eager; fi
[ "$RATE" = 0 ] && RATE=4.0  # no probe finished: the H100's fp32 pace of 2026-11-26

echo "== [$(elapsed)s] documented recipe, 2 steps: accelerate launch run_finetune.py recipes/music_abc.json"
timeout 70 python3 -m accelerate.commands.launch run_finetune.py recipes/music_abc.json --max_steps 2 \
  --output_dir "$OUT/documented" --save_strategy no --eval_strategy no --report_to none --logging_steps 1 > "$OUT/documented.log" 2>&1
echo "exit $?"; grep -E "optimizer|precision|train_runtime" "$OUT/documented.log" | tail -4

LEFT=$(( END_TRAIN - $(elapsed) - 30 ))
MAX_STEPS=$(python3 -c "import json; print(json.load(open('$RECIPE')).get('max_steps', 2000))")
STEPS=$(python3 -c "print(max($MIN_STEPS, min($MAX_STEPS, int($RATE * $LEFT * 0.85) // 50 * 50)))")
RUN="$OUT/run"
echo "== [$(elapsed)s] $RECIPE $PRECISION --max_steps $STEPS ($RATE steps/s probed, $LEFT s left)"
timeout $(( END_TRAIN - $(elapsed) + 40 )) python3 run_finetune.py "$RECIPE" $PRECISION --max_steps "$STEPS" --output_dir "$RUN" \
  --save_steps "$STEPS" --eval_steps $(( STEPS / 4 > 1 ? STEPS / 4 : 1 )) --logging_steps 50 > "$OUT/run.log" 2>&1
echo "exit $?"; grep -oE "'eval_bits_per_char': '[0-9.]+'" "$OUT/run.log"; cat "$RUN/train_results.json" 2>/dev/null

LEFT=$(( END_ALL - $(elapsed) - 10 ))
echo "== [$(elapsed)s] evaluate_checkpoints.py, final model, ${NUM_SAMPLES:-64} prompts ($LEFT s left)"
timeout "$LEFT" python3 evaluate_checkpoints.py "$RUN" --steps "$STEPS" --num_samples "${NUM_SAMPLES:-64}" > "$OUT/evaluate.log" 2>&1
echo "exit $?"; cat "$RUN/eval/metrics.md" 2>/dev/null
echo "== [$(elapsed)s] done"
