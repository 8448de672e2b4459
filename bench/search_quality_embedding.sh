#!/usr/bin/env bash
# Issue 16's protocol with MiniLM's token embedding searched beside its 36 linear layers, on one
# GPU machine, in one call: the word embedding (30522 × 384, 11.7 M parameters, more than the 36
# layers' 10.8 M) takes the same options as the layers, and effective bits count it. Three grids
# side by side (bench/search_quality_confirm.sh, MiniLM only, one seed of random and TPE, no K-FAC):
# the full space with the embedding, full-act-both (both grids of every integer level, GPTQ in
# activation order) with the embedding, and, for a comparison within the call, the Hessian
# program in full-act-both without it (session 10's figures). Before them, each option's
# distortion with the embedding alone quantized (embedding.md).
# OUT_DIR receives embedding.md, full.md, both.md, base.md and raw.tgz.
# Usage: MINILM=DIR bench/search_quality_embedding.sh OUT_DIR [DEADLINE]
set -u
final=$1 deadline=${2:-450}
tmp=$(mktemp -d)
mkdir -p "$final"
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
minilm=${MINILM:-minilm}
python bench/embedding_sensitivity.py --model "$minilm" --device cuda > "$final/embedding.md" 2>&1
mkdir -p "$tmp/base"
timeout "$deadline" python bench/search_quality.py --device cuda --tf32 --set confirm --seeds 3 \
    --evaluations 50 250 1000 --budgets 3.5 4.25 --strategies integer-program-hessian \
    --space full-act-both --model "$minilm" --samples 512 --screen 64 --confirm-samples 896 \
    --stats-samples 256 --seq-len 64 --batch-size 512 --heldout-offset 896 \
    --heldout-samples 256 --noise-offset 1152 --out "$tmp/base" > "$tmp/base/log.txt" 2>&1 &
for space in full full-act-both; do
    MODELS=minilm SPACE=$space BATCH=512 SEEDS=0 KFAC_HYBRID=0 SQ_ARGS=--embeddings \
        IP_STRATEGIES="integer-program-hessian integer-program-fisher" \
        bench/search_quality_confirm.sh "$tmp/$space" "$deadline" &
done
wait
cp "$tmp/full/minilm.md" "$final/full.md"
cp "$tmp/full-act-both/minilm.md" "$final/both.md"
python bench/search_quality.py --report "$tmp/base/results.json" --out "$tmp/base" \
    > "$final/base.md" 2>&1
tar czf "$final/raw.tgz" -C "$tmp" .
