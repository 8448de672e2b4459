#!/usr/bin/env bash
# GPTQ's variants (activation order, clipped grids) on one GPU machine, in one call:
# 1. bench/gptq_act_order.py --time: the level database's batched GPTQ of every variant (plain,
#    activation order, clipped grids, both) on an 8B model's shapes (32 layers of 4096 × 4096,
#    8 of 14336 × 4096); and its table of layer errors on MiniLM (errors.md);
# 2. trains the GPT-2 of bench/train_causal_lm.py (1,000 steps), alone on the GPU;
# 3. issue 16's protocol (search_quality_confirm.sh) in the space SPACE (default full-act: every
#    GPTQ level of the full space in activation order; full-act-clip: every integer level of that
#    on clipped grids) on MiniLM and on the GPT-2, one seed of random and TPE, no K-FAC hybrid,
#    side by side; beside them the Hessian program in the space BASE (default full) on both
#    models, with the same samples, for a comparison within the call.
# OUT_DIR receives act_time.txt, errors.md, minilm.md, gpt2.md, base-minilm.md, base-gpt2.md and
# all.tgz.
# Usage: [SPACE=full-act-clip BASE=full-act] bench/search_quality_act.sh OUT_DIR [DEADLINE]
#        (MINILM: the model directory)
set -u
final=$1 deadline=${2:-420}
tmp=$(mktemp -d)
mkdir -p "$final"
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
python bench/gptq_act_order.py --time --device cuda --layers 32 > "$final/act_time.txt" 2>&1
python bench/gptq_act_order.py --time --device cuda --layers 8 --shape 14336 4096 \
    >> "$final/act_time.txt" 2>&1
python bench/train_causal_lm.py --out "$tmp/lm" --steps 1000 --calib-chars 400 \
    > "$tmp/train.log" 2>&1
start=$(date +%s)
python bench/gptq_act_order.py --device cuda --model "${MINILM:-minilm}" > "$final/errors.md" 2>&1 &
common=(--device cuda --tf32 --set confirm --seeds 3 --evaluations 50 250 1000
        --budgets 3.5 4.25 --strategies integer-program-hessian)
space=${SPACE:-full-act} base=${BASE:-full}
# the same samples as search_quality_confirm.sh gives each model
mkdir -p "$tmp/base-minilm" "$tmp/base-gpt2"
timeout "$deadline" python bench/search_quality.py "${common[@]}" --space "$base" \
    --model "${MINILM:-minilm}" --samples 512 --screen 64 --confirm-samples 896 \
    --stats-samples 256 --seq-len 64 --batch-size 512 --heldout-offset 896 \
    --heldout-samples 256 --noise-offset 1152 --out "$tmp/base-minilm" \
    > "$tmp/base-minilm/log.txt" 2>&1 &
timeout "$deadline" python bench/search_quality.py "${common[@]}" --space "$base" \
    --model "$tmp/lm" --source "$tmp/lm/calib.jsonl" --samples 128 --screen 32 \
    --confirm-samples 512 --stats-samples 256 --seq-len 128 --batch-size 128 \
    --heldout-offset 512 --heldout-samples 256 --noise-offset 768 --kl-top-k 256 \
    --out "$tmp/base-gpt2" > "$tmp/base-gpt2/log.txt" 2>&1 &
MODELS=minilm SPACE=$space BATCH=512 SEEDS=0 KFAC_HYBRID=0 \
    bench/search_quality_confirm.sh "$tmp/minilm-act" "$deadline" &
LM=$tmp/lm MODELS=gpt2 SPACE=$space BATCH=128 SEEDS=0 KFAC_HYBRID=0 \
    bench/search_quality_confirm.sh "$tmp/gpt2-act" "$deadline" &
wait
echo "grids: $(( $(date +%s) - start )) s" >> "$final/act_time.txt"
cp "$tmp/minilm-act/minilm.md" "$final/minilm.md"
cp "$tmp/gpt2-act/gpt2.md" "$final/gpt2.md"
for m in minilm gpt2; do
    python bench/search_quality.py --report "$tmp/base-$m/results.json" --out "$tmp/base-$m" \
        > "$final/base-$m.md" 2>&1
done
rm -f "$tmp/lm/model.safetensors"
tar czf "$final/all.tgz" -C "$tmp" .
