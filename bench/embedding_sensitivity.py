"""What each option costs MiniLM when only its token embedding is quantized.

The word embedding (30522 × 384) holds more parameters than the 36 linear layers of the six
blocks together (11.7 M against 10.8 M), so whether it can be searched decides much of what a
budget in effective bits can buy. This scores every integer and float option of a space of
``bench/search_quality.py`` on the embedding alone (everything else at full precision) on
held-out samples, with the Hessian-weighted proxy (each row's squared error weighted by how often
the calibration tokens look it up) beside it. GPTQ options are not scored apart: on a lookup they
are round-to-nearest on the same grid (tests/workers/test_embeddings.py), so each appears as the
round-to-nearest option of its grid.

    python bench/embedding_sensitivity.py [--model DIR] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

import torch
from search_quality import SPACES

from mpsearch.spaces import Candidate, parse_option
from mpsearch.spaces.space import LayerRule, build_space
from mpsearch.workers.checkpoint import scoring_setup
from mpsearch.workers.config import CalibrationConfig, ModelConfig
from mpsearch.workers.model_loading import inspect_model
from mpsearch.workers.worker import Worker

WORD = "embeddings.word_embeddings"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--space", default="full-act-both", choices=sorted(SPACES))
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--offset", type=int, default=896, help="held-out samples' first index")
    ap.add_argument("--stats-samples", type=int, default=256)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    info = inspect_model(ModelConfig(name=args.model))
    # a GPTQ option of the space as the round-to-nearest option of its grid (equal on a lookup)
    options = tuple(dict.fromkeys(replace(parse_option(label), rounding="rtn")
                                  for label in SPACES[args.space]))
    space = build_space(info.layers, [LayerRule(f"^{WORD}$", options)],
                        total_params=info.total_params)
    layer = space.layers[0]

    def worker(offset: int, samples: int) -> Worker:
        cal = CalibrationConfig(source="stdlib-docs", samples=samples, offset=offset, seq_len=64,
                                batch_size=samples)
        setup = scoring_setup(info.path, "auto", "embedding_distortion", cal, "float32")
        return Worker(replace(setup, device=args.device), space)

    held, stats = worker(args.offset, args.samples), worker(0, args.stats_samples)
    seen = len(torch.cat([b["input_ids"][b["attention_mask"].bool()] for b in stats.batches])
               .unique())
    print(f"{WORD}: {layer.out_features} × {layer.in_features} ({layer.numel / 1e6:.2f} M "
          f"parameters); {seen} rows looked up by the {args.stats_samples} calibration samples; "
          f"held-out: {args.samples} samples at offset {args.offset}, {args.device}\n")
    print("| option | bits | distortion, embedding alone (held-out) | proxy (calibration) |")
    print("| --- | --- | --- | --- |")
    W = stats.original[WORD]
    for i, option in enumerate(space.genes[0].options):
        value = held.evaluate(Candidate((i,))).objective
        proxy = stats.output_error(WORD, W, stats.variant(WORD, option).to(W.device))
        print(f"| {option.label} | {option.effective_bits(layer.in_features):.3f} | "
              f"{value:.5f} | {proxy:.4g} |")


if __name__ == "__main__":
    main()
