#!/usr/bin/env bash
# How far below uniform can any search of a space get on MiniLM? The oracle of issue 16's
# MiniLM targets: every strategy searches on the held-out samples themselves
# (--calib-offset = --heldout-offset: 256 samples × 64 tokens at offset 896, the held-out set of
# search_quality_confirm.sh), at full fidelity, to 5,000 evaluations; GPTQ's Hessians stay on the
# first 256 samples. No search that sees only calibration samples can beat this figure on the
# held-out set, so a target below it is out of reach of search in that space. The noise floor
# (offset 1152) shows how much of the oracle's figure is fitted to its samples.
# One GPU call: spaces full and wide, 3.5 and 4.25 bits, evolution (two seeds), the proxy
# hybrid and the proxy integer program, side by side.
# Usage: bench/search_quality_oracle.sh OUT_DIR [DEADLINE]   (MINILM: the model directory)
set -u
final=$1 deadline=${2:-450}
out=$(mktemp -d)
start=$(date +%s)
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
left() { echo $(( deadline - ($(date +%s) - start) - 10 )); }
run() {  # name, then search_quality.py arguments
    local name=$1; shift
    mkdir -p "$out/$name"
    timeout "$(left)" python bench/search_quality.py --device cuda --tf32 --set default \
        --model "${MINILM:-minilm}" --samples 256 --calib-offset 896 --stats-samples 256 \
        --seq-len 64 --batch-size 256 --heldout-offset 896 --heldout-samples 256 \
        --noise-offset 1152 --evaluations 250 1000 2500 5000 --out "$out/$name" "$@" \
        > "$out/$name/log.txt" 2>&1 &
}
for space in ${SPACES:-full wide}; do
    for bits in ${BITS:-3.5 4.25}; do
        run "$space-$bits-evo" --space "$space" --budgets "$bits" --strategies evolutionary \
            --seeds 2
        run "$space-$bits-hybrid" --space "$space" --budgets "$bits" --strategies hybrid-proxy \
            --seeds 1
        run "$space-$bits-ip" --space "$space" --budgets "$bits" \
            --strategies integer-program-proxy --seeds 1
    done
done
wait
mkdir -p "$final"
for space in ${SPACES:-full wide}; do
    python bench/search_quality.py --report "$out/$space"-*/results.json --out "$out/$space" \
        > "$final/$space.md" 2>&1
done
tar czf "$final/raw.tgz" -C "$out" .
