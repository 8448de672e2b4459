"""Batched GPTQ: :func:`~.gptq.gptq_quantize` of many layers of one shape at once, returning the
integer codes and grids the level database stores.

Every column step is one vectorised operation over all rows of all B layers and the lazy update
of the later columns one batched matmul per block, so a level of a many-block model costs d_col
small steps instead of B · d_col. On a GPU the column steps of a full lazy block are one CUDA
graph, captured once per batch and replayed for every later block (:class:`_BlockSteps`), which
removes the launch cost of ~13 small kernels per column that bounds batches of short rows. The
arithmetic is the per-layer reference's, operation for operation: the results are the same bit
for bit (``tests/workers/test_gptq.py``; on a GPU each capture is checked against the eager steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .gptq import grid_params


@dataclass(frozen=True)
class BatchCodes:
    """What batched GPTQ chose for B layers, as the format stores it: ``codes`` (B × d_row ×
    d_col, uint8) hold u = q − q_min, the unsigned offset of each integer code q (q_min = 0
    asymmetric, −2^(b−1) symmetric); ``scale`` and ``zero`` (B × d_row × groups, float32
    holding fp16 scales and integer zero points; ``zero`` None when symmetric); ``mask`` the kept
    weights of a sparse option (bool) or None. ŵ = s · (q − z) · keep."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    q_min: int
    mask: torch.Tensor | None = None

    def dequantize(self, b: int, rows: slice | None = None) -> torch.Tensor:
        """Ŵ of layer ``b`` (rows ``rows``), float32: the very values the column steps used."""
        r = rows if rows is not None else slice(None)
        codes, scale = self.codes[b, r], self.scale[b, r]
        group = codes.shape[1] // scale.shape[1]
        q = codes.float().add_(self.q_min)
        s = scale.repeat_interleave(group, dim=1)
        z = torch.zeros_like(s) if self.zero is None else \
            self.zero[b, r].repeat_interleave(group, dim=1)
        w = s * (q - z)
        if self.mask is not None:
            w = w * self.mask[b, r].float()
        return w


def gptq_encode_batch(W: torch.Tensor, U: torch.Tensor, dead: torch.Tensor, bits: int,
                      group_size: int | None = None, symmetric: bool = False,
                      block_size: int = 128, mask: torch.Tensor | None = None,
                      graphs: bool = True, perm: torch.Tensor | None = None,
                      clip: bool = False) -> BatchCodes:
    """:func:`gptq_quantize` of B layers at once, returning the integer codes and grids.

    ``W`` is B × d_row × d_col, ``U`` and ``dead`` the stacked factors of
    :func:`dampened_inverse_cholesky` of their Hessians (B × d_col × d_col and B × d_col),
    ``mask`` B × d_row × d_col or None. The same algorithm, step for step: each column step is
    one vectorised operation over all B layers (B · d_row rows), and the lazy update of the later
    columns one batched matmul per block, so a level of a many-block model costs d_col small
    steps instead of B · d_col. Layers that share a Hessian (the inputs of q/k/v, of gate/up) may
    be stacked along d_row instead: GPTQ treats rows independently. The codes are kept as uint8
    (a quarter of the float32 result), :meth:`BatchCodes.dequantize` gives the weights. On a GPU
    (``graphs``) each full block's column steps replay one CUDA graph (:class:`_BlockSteps`).

    ``perm`` (B × d_col): GPTQ in activation order, each layer's columns in its order
    (:func:`~.gptq.activation_order`); ``U`` and ``dead`` are then the factors of the *permuted*
    Hessians (:func:`~.gptq.permuted_hessian`), ``W`` and ``mask`` stay in the original order.
    Groups are static, as in :func:`~.gptq.gptq_quantize`: the grids come from the original
    weights before the first column, and the codes are returned in the original order.
    ``clip``: every grid by MSE clipping, as :func:`~.gptq.gptq_quantize`.
    """
    B, d_row, d_col = W.shape
    if group_size is not None and d_col % group_size:
        raise ValueError(f"group size {group_size} does not divide d_col={d_col}")
    if U.shape != (B, d_col, d_col) or dead.shape != (B, d_col):
        raise ValueError(f"factors of shape {tuple(U.shape)} do not match W of {tuple(W.shape)}")
    if group_size is not None and block_size % group_size:
        block_size = group_size if group_size > block_size else group_size * (block_size // group_size)
    keep = None if mask is None else mask.to(W.device, torch.float32)
    # activation order: where each column goes, and back, and each permuted column's group
    columns = inverse = owner = None
    if perm is not None:
        perm = perm.to(W.device)
        columns = perm.unsqueeze(1).expand(B, d_row, d_col)
        inverse = torch.argsort(perm, dim=1).unsqueeze(1).expand(B, d_row, d_col)
        owner = perm // (d_col if group_size is None else group_size)  # B × d_col
    if columns is None:
        W = W.to(torch.float32, copy=True)  # one copy
    else:
        W = W.to(torch.float32).gather(2, columns)
        keep = None if keep is None else keep.gather(2, columns)
    W.mul_((~dead).unsqueeze(1))  # dead inputs zeroed
    groups = 1 if group_size is None else d_col // group_size
    scales = torch.empty(B, d_row, groups, device=W.device)
    zeros = torch.empty(B, d_row, groups, device=W.device)
    _, _, q_min, q_max = grid_params(torch.zeros(1, 1, device=W.device), bits, symmetric)
    channel = None
    if columns is not None and inverse is not None:
        # static groups: every grid from the original weights, before the first column
        group = d_col if group_size is None else group_size
        s0, z0, _, _ = grid_params(W.gather(2, inverse).reshape(-1, group), bits, symmetric,
                                   clip)
        scales.copy_(s0.view(B, d_row, groups))
        zeros.copy_(z0.view(B, d_row, groups))
    elif group_size is None:  # per channel: one grid from the whole row, before the first column
        s0, z0, _, _ = grid_params(W.reshape(B * d_row, -1), bits, symmetric, clip)
        channel = (s0.view(B, d_row), z0.view(B, d_row))
        scales[:, :, 0], zeros[:, :, 0] = channel
    # signed codes (symmetric) fit int8, unsigned ones uint8; both exact casts of the float codes
    C = torch.empty(W.shape, dtype=torch.int8 if symmetric else torch.uint8, device=W.device)
    step = _BlockSteps(W, C.dtype, keep is not None, block_size,
                       None if owner is not None else group_size, bits, symmetric,
                       q_min, q_max, channel, graphs, owner is not None, clip)
    for i1 in range(0, d_col, block_size):
        i2 = min(i1 + block_size, d_col)
        grid = None  # static groups: the block's columns' scales and zero points
        if owner is not None:
            idx = owner[:, i1:i2].unsqueeze(1).expand(B, d_row, i2 - i1)
            grid = (scales.gather(2, idx), zeros.gather(2, idx))
        buf = step.run(W[:, :, i1:i2], U[:, i1:i2, i1:i2],
                       None if keep is None else keep[:, :, i1:i2], grid)
        C[:, :, i1:i2] = buf.C1
        if group_size is not None and owner is None:
            g1 = i1 // group_size
            scales[:, :, g1:g1 + buf.S1.shape[2]] = buf.S1
            zeros[:, :, g1:g1 + buf.S1.shape[2]] = buf.Z1
        W[:, :, i2:] -= torch.bmm(buf.Err1, U[:, i1:i2, i2:])  # the lazy batch update
    del W, step
    if inverse is not None:
        C = C.gather(2, inverse)  # the codes in the original column order
    if symmetric:
        C = (C.to(torch.int16) - q_min).to(torch.uint8)
    return BatchCodes(C, scales, None if symmetric else zeros, q_min,
                      None if mask is None else mask.to(C.device, torch.bool))


class _Buffers:
    """The tensors one lazy block's column steps read and write, in place."""

    def __init__(self, like: torch.Tensor, codes: torch.dtype, masked: bool, groups: int,
                 static: bool = False) -> None:
        B, R, n = like.shape
        self.W1, self.Err1 = torch.empty_like(like), torch.empty_like(like)  # float32
        self.U1 = torch.empty(B, n, n, device=like.device)
        self.K1 = torch.empty_like(like) if masked else None
        # static groups (activation order): each column's scale and zero point, given
        self.SC1 = torch.empty_like(like) if static else None
        self.ZC1 = torch.empty_like(like) if static else None
        self.C1 = torch.empty(like.shape, dtype=codes, device=like.device)
        self.S1 = torch.empty(B, R, groups, device=like.device)
        self.Z1 = torch.empty(B, R, groups, device=like.device)

    def load(self, W1: torch.Tensor, U1: torch.Tensor, K1: torch.Tensor | None,
             grid: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        self.W1.copy_(W1)
        self.U1.copy_(U1)
        if self.K1 is not None and K1 is not None:
            self.K1.copy_(K1)
        if self.SC1 is not None and self.ZC1 is not None and grid is not None:
            self.SC1.copy_(grid[0])
            self.ZC1.copy_(grid[1])

    def outputs(self, grids: bool) -> tuple[torch.Tensor, ...]:  # what the steps write
        return (self.W1, self.Err1, self.C1) + ((self.S1, self.Z1) if grids else ())


CAPTURES = {"graph": 0, "eager": 0}  # how the captures of this process came out (benchmarks)


class _BlockSteps:
    """GPTQ's column steps of one lazy block (eq. 3 within the block, the grids of the groups that
    start in it), on static buffers. On a GPU the steps of a full block are captured once as a
    CUDA graph and replayed for every later block: the same kernels, without the launch cost of
    ~13 small operations per column that bounds a batch of short rows. The first captured block
    is checked bit for bit against the same steps run eagerly; a difference (or a failed
    capture) keeps the eager steps."""

    def __init__(self, W: torch.Tensor, codes: torch.dtype, masked: bool, block_size: int,
                 group_size: int | None, bits: int, symmetric: bool, q_min: int, q_max: int,
                 channel: tuple[torch.Tensor, torch.Tensor] | None, graphs: bool,
                 static: bool = False, clip: bool = False) -> None:
        self.codes, self.masked, self.group_size, self.static = codes, masked, group_size, static
        self.clip = clip
        self.bits, self.symmetric, self.q_min, self.q_max = bits, symmetric, q_min, q_max
        self.channel = channel
        self.block_size = min(block_size, W.shape[2])
        full = W[:, :, :self.block_size]
        self.full = _Buffers(full, codes, masked, self._groups(self.block_size), static)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.try_graph = graphs and W.device.type == "cuda"

    def _groups(self, n: int) -> int:
        return 1 if self.group_size is None else max(n // self.group_size, 1)

    def steps(self, b: _Buffers) -> None:
        W1, Err1, U1, C1 = b.W1, b.Err1, b.U1, b.C1
        B, R, n = W1.shape
        if self.channel is not None:
            scale, zero = self.channel
        for i in range(n):
            if b.SC1 is not None and b.ZC1 is not None:  # static groups: the column's own grid
                scale, zero = b.SC1[:, :, i], b.ZC1[:, :, i]
            elif self.group_size is not None and i % self.group_size == 0:
                s, z, _, _ = grid_params(W1[:, :, i:i + self.group_size].reshape(B * R, -1),
                                         self.bits, self.symmetric, self.clip)
                scale, zero = s.view(B, R), z.view(B, R)
                b.S1[:, :, i // self.group_size] = scale
                b.Z1[:, :, i // self.group_size] = zero
            w = W1[:, :, i]
            c = torch.clamp(torch.round(w / scale) + zero, self.q_min, self.q_max)
            q = scale * (c - zero)  # exactly :func:`quant`
            if b.K1 is not None:
                q = q * b.K1[:, :, i]
            C1[:, :, i] = c
            err = (w - q) / U1[:, i, i].unsqueeze(1)
            W1[:, :, i + 1:].addcmul_(err.unsqueeze(2), U1[:, i, i + 1:].unsqueeze(1),
                                      value=-1)  # eq. 3 within the block (one rounding)
            Err1[:, :, i] = err

    def run(self, W1: torch.Tensor, U1: torch.Tensor, K1: torch.Tensor | None,
            grid: tuple[torch.Tensor, torch.Tensor] | None = None) -> _Buffers:
        if W1.shape[2] != self.block_size:  # a last, narrower block: its own buffers, eagerly
            b = _Buffers(W1, self.codes, self.masked, self._groups(W1.shape[2]), self.static)
            b.load(W1, U1, K1, grid)
            self.steps(b)
            return b
        b = self.full
        b.load(W1, U1, K1, grid)
        if self.graph is not None:
            self.graph.replay()
        elif self.try_graph:
            self.try_graph = False
            self.graph = self._capture(b)
        else:
            self.steps(b)
        return b

    def _capture(self, b: _Buffers) -> torch.cuda.CUDAGraph | None:
        """Run the block eagerly on copies (the reference), capture the steps on ``b``, replay
        them and compare: the graph when every output is the same bit for bit, else None (``b``
        then holds the eager results)."""
        ref = _Buffers(b.W1, self.codes, self.masked, b.S1.shape[2], self.static)
        ref.load(b.W1, b.U1, b.K1, None if b.SC1 is None or b.ZC1 is None else (b.SC1, b.ZC1))
        self.steps(ref)  # also warms up every kernel before the capture
        inputs = (b.W1.clone(), b.U1.clone())
        graph = torch.cuda.CUDAGraph()
        try:  # thread_local: the level database's writer thread may copy to the host meanwhile
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.steps(b)
            b.W1.copy_(inputs[0])
            b.U1.copy_(inputs[1])
            graph.replay()
            grids = self.group_size is not None
            same = all(torch.equal(x, y) for x, y in zip(b.outputs(grids), ref.outputs(grids),
                                                         strict=True))
        except Exception:  # noqa: BLE001 - a capture the runtime refuses: the eager steps
            same = False
        CAPTURES["graph" if same else "eager"] += 1
        if same:
            return graph
        for x, y in zip(b.outputs(True), ref.outputs(True), strict=True):
            x.copy_(y)
        return None


def gptq_quantize_batch(W: torch.Tensor, U: torch.Tensor, dead: torch.Tensor, bits: int,
                        group_size: int | None = None, symmetric: bool = False,
                        block_size: int = 128, mask: torch.Tensor | None = None,
                        perm: torch.Tensor | None = None, clip: bool = False) -> torch.Tensor:
    """:func:`gptq_encode_batch`, dequantized: Ŵ of the B layers in W's dtype."""
    enc = gptq_encode_batch(W, U, dead, bits, group_size, symmetric, block_size, mask,
                            perm=perm, clip=clip)
    return torch.stack([enc.dequantize(b) for b in range(W.shape[0])]).to(W.dtype)
