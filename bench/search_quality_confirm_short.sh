#!/usr/bin/env bash
# A short form of search_quality_confirm.sh for one model and few evaluations: every
# (budget, strategy, seed) in a process of its own, so the grid takes about one run's time.
# Writes OUT/MODEL.tgz (every results.json and log) and OUT/MODEL.md (the merged tables).
# Usage: bench/search_quality_confirm_short.sh OUT DEADLINE MODEL_DIR EVALUATIONS... (MiniLM)
set -u
out=$1 deadline=$2 model=$3
shift 3
evals=("$@")
start=$(date +%s)
work=$(mktemp -d)
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
left() { echo $(( deadline - ($(date +%s) - start) - 6 )); }
run() {  # name, then search_quality.py arguments
    local name=$1; shift
    mkdir -p "$work/$name"
    timeout "$(left)" python bench/search_quality.py --device cuda --tf32 --set confirm \
        --space full --model "$model" --samples 512 --screen 64 --confirm-samples 896 \
        --stats-samples 256 --seq-len 64 --heldout-offset 896 --heldout-samples 256 \
        --noise-offset 1152 --evaluations "${evals[@]}" --out "$work/$name" "$@" \
        > "$work/$name/log.txt" 2>&1 &
}
for bits in 3.5 4.25; do
    for seed in 0 1 2; do
        for name in evolutionary hybrid optuna-tpe; do
            run "$bits-$name-$seed" --budgets $bits --strategies $name --seeds 1 --first-seed $seed
        done
    done
    run "$bits-ip" --budgets $bits --seeds 3 --strategies integer-program-kfac \
        integer-program-fisher integer-program-hessian random
done
wait
python bench/search_quality.py --report "$work"/*/results.json --out "$work" > "$out/minilm.md" 2>&1
tar czf "$out/minilm.tgz" -C "$work" .
