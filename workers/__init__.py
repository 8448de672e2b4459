"""What a worker does with the model: the math (quantizers, GPTQ, sparsity, scoring,
sensitivity), the format registry, applying a candidate in place, the objectives, exports of
weights (checkpoints, compressed-tensors, GGUF), and the one Ray actor (:mod:`.actor`).

Importing this package loads nothing; its modules import torch. The spec sections the workers
own (:mod:`.config`) are free of torch, so a spec validates without it.
"""
