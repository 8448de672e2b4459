#!/usr/bin/env bash
# The full search-quality grid on one GPU machine, as parallel processes (the GPU is mostly idle
# under one MiniLM process): per space and budget, the fast strategies in one process, TPE in
# another, and the Gaussian-process sampler one process per seed (its ask takes seconds).
# Usage: bench/search_quality_grid.sh MODEL_DIR OUT_DIR SPACE...; then
#   python bench/search_quality.py --report OUT_DIR/*/results.json --out OUT_DIR
set -u
model=$1 out=$2
shift 2
spaces=("$@")
export OMP_NUM_THREADS=2 TOKENIZERS_PARALLELISM=false
run() {  # name, then search_quality.py arguments
    local name=$1; shift
    mkdir -p "$out/$name"
    timeout "${GRID_TIMEOUT:-560}" python bench/search_quality.py --model "$model" --device cuda \
        --out "$out/$name" "$@" > "$out/$name/log.txt" 2>&1 &
}
for bits in 3.0 4.25; do
    for space in "${spaces[@]}"; do
        run "$space-$bits-fast" --space "$space" --budgets "$bits" \
            --strategies random evolutionary evolutionary-population integer-program hybrid \
            integer-program-proxy hybrid-proxy
        run "$space-$bits-tpe" --space "$space" --budgets "$bits" --strategies optuna-tpe
    done
    [[ " ${spaces[*]} " == *" full "* ]] || continue
    for seed in 0 1 2; do
        run "full-$bits-gp$seed" --space full --budgets "$bits" --strategies optuna-gp \
            --seeds 1 --first-seed "$seed"
    done
done
wait
