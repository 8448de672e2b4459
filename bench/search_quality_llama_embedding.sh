#!/usr/bin/env bash
# Issue 16's causal-LM protocol (search_quality_confirm.sh's GPT-2 grid: KL on the reference's
# top 256 tokens, 3 seeds, 1,000 evaluations, held-out chunks of files never trained on) on the
# Llama of bench/train_causal_lm.py --arch llama (untied embedding and LM head), with its
# embedding searched beside the 63 block layers (--embeddings) and, side by side, without it.
# One GPU machine, one call; one seed of random and TPE, no K-FAC (it refuses an embedding).
# OUT_DIR receives training.json, embedding.md, blocks.md and raw.tgz.
# Usage: bench/search_quality_llama_embedding.sh OUT_DIR [DEADLINE]
set -u
final=$1 deadline=${2:-420}
tmp=$(mktemp -d)
mkdir -p "$final"
python bench/train_causal_lm.py --out "$tmp/llama" --arch llama --steps 1000 --calib-chars 400 \
    > "$final/training.json" 2> "$tmp/train.err"
common=(MODELS=gpt2 "LM=$tmp/llama" SPACE=full BATCH=128 SEEDS=0 KFAC_HYBRID=0
        "IP_STRATEGIES=integer-program-hessian integer-program-fisher")
env "${common[@]}" SQ_ARGS=--embeddings bench/search_quality_confirm.sh "$tmp/embedding" \
    "$deadline" &
env "${common[@]}" bench/search_quality_confirm.sh "$tmp/blocks" "$deadline" &
wait
cp "$tmp/embedding/gpt2.md" "$final/embedding.md"
cp "$tmp/blocks/gpt2.md" "$final/blocks.md"
rm -f "$tmp/llama/model.safetensors"
tar czf "$final/raw.tgz" -C "$tmp" embedding blocks
