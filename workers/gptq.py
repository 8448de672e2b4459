"""GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers") as pure tensor functions, in the paper's notation.

For a layer with weight W (d_row × d_col) and calibration inputs X (n × d_col), GPTQ minimizes the
layer's output error ‖XWᵀ − XŴᵀ‖² (eq. 1) one column at a time. With the Hessian of that objective,
H = 2XᵀX (eq. 2 and the text after it), quantizing column q and compensating the not-yet-quantized
columns F gives the optimal update (eq. 3, OBQ)

    δ_F = −(w_q − quant(w_q)) / [H_F⁻¹]_qq · (H_F⁻¹)_{:,q}

GPTQ quantizes columns in a fixed order, so every row shares the same sequence of inverse Hessians,
and reads them off the upper Cholesky factor of H⁻¹ (Step 3, "Cholesky reformulation"); updates are
applied lazily, ``block_size`` columns at a time (Step 2, "lazy batch-updates"). H is dampened by
λ = ``percdamp`` · mean(diag H) for numerical stability, as the reference code does.

Grouped scales are computed when a group starts, from the *already error-compensated* weights of
that group, as the reference implementation does; per-channel scales come from the whole row
before the first column. The integer grid (fp16 scales, zero points, clamping) is exactly the RTN
grid of :mod:`mpsearch.workers.quantize`, so GPTQ and RTN levels cost the same and differ only in
rounding. One Hessian per layer serves every bit-width and group size of that layer (EvoPress's
level database): :class:`HessianAccumulator` gathers it once, :func:`gptq_quantize` reads it.
Many layers at once: :mod:`.gptq_batch`.
"""

from __future__ import annotations

import torch

from .formats import fp16_scale  # the one scale flooring, shared with RTN and the float formats


class HessianAccumulator:
    """H = 2/n · Σ xxᵀ over the n calibration rows seen so far (running mean, as the reference).

    Also keeps Σ x² per input column, the squared activation norms ‖X_j‖² that Wanda's
    activation-aware pruning score |W_ij|·‖X_j‖ uses.
    """

    def __init__(self, columns: int, device: torch.device | str = "cpu",
                 hessian: bool = True) -> None:
        self.n = 0
        self.H = torch.zeros(columns, columns, device=device) if hessian else None
        self.sq_norms = torch.zeros(columns, device=device, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> None:
        """Add the rows of ``x`` (… × d_col): every leading index is one calibration row."""
        x = x.reshape(-1, x.shape[-1]).float()
        m = x.shape[0]
        if m == 0:
            return
        self.sq_norms += x.square().sum(dim=0, dtype=torch.float64)
        if self.H is not None:
            self.H *= self.n / (self.n + m)
            x = x * (2.0 / (self.n + m)) ** 0.5
            self.H += x.t() @ x
        self.n += m

    @property
    def act_norm(self) -> torch.Tensor:
        """‖X_j‖₂ per input column (float32)."""
        return self.sq_norms.sqrt().float()


class LookupAccumulator:
    """An embedding's calibration statistics: how often each of its rows is looked up.

    A lookup's input is one-hot, so its GPTQ Hessian 2/n · Σ xxᵀ is diagonal: row r of the weight
    (vocabulary × width) sees ``2·count_r/n`` times the identity on its width. GPTQ's error
    feedback is then zero, so ``H`` is the identity (GPTQ of an embedding rounds to nearest on the
    same grid) and Wanda's column norms are all one (magnitude pruning); ``row_weights`` are the
    2·count_r/n that make Σ_r w_r ‖ΔW_r‖² the lookup's own output error per calibration token,
    what ``tr(ΔW H ΔWᵀ)`` is for a linear layer.
    """

    def __init__(self, rows: int, columns: int, device: torch.device | str = "cpu",
                 hessian: bool = True) -> None:
        self.n = 0
        self.counts = torch.zeros(rows, device=device, dtype=torch.float64)
        self.H = torch.eye(columns, device=device) if hessian else None
        self.columns = columns

    def add(self, ids: torch.Tensor) -> None:
        """Count the token ids of ``ids`` (any shape)."""
        ids = ids.reshape(-1).to(self.counts.device)
        self.counts += torch.bincount(ids, minlength=self.counts.numel()).to(torch.float64)
        self.n += ids.numel()

    @property
    def act_norm(self) -> torch.Tensor:
        return torch.ones(self.columns, device=self.counts.device)

    @property
    def row_weights(self) -> torch.Tensor:
        """2·count_r/n per row (float32)."""
        return (self.counts * (2.0 / max(self.n, 1))).float()


def lookup_error(W: torch.Tensor, W_hat: torch.Tensor, row_weights: torch.Tensor) -> float:
    """Σ_r w_r ‖W_r − Ŵ_r‖²: an embedding's output error per calibration token (see
    :class:`LookupAccumulator`), the analogue of :func:`hessian_error`."""
    w = row_weights.to(W.device)
    delta = W.float() - W_hat.float().to(W.device)
    return float((delta.square().sum(dim=1) * w).sum())


# MSE clipping tries these fractions of each group's range (1.0 down to 0.5 in steps of 0.025) and
# keeps the one of least squared error; 1.0 is the min/max grid, so clipping never does worse on
# the weights it searches. The range follows AWQ's auto_clip (max_shrink 0.5), at twice its
# resolution.
CLIP_SHRINKS = tuple(1.0 - i / 40 for i in range(21))


def grid_params(w: torch.Tensor, bits: int, symmetric: bool,
                clip: bool = False) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Scale s, zero z and the code range [q_min, q_max] for the rows of ``w`` (rows × group).

    Exactly the RTN grid: asymmetric s = (max(w,0) − min(w,0)) / (2^b − 1), z = round(−min/s);
    symmetric s = max|w| / (2^(b−1) − 1), z = 0; s rounded to fp16 (floored at its
    smallest normal, so an all-zero group divides by a positive number). With ``clip``, each
    row's range is first multiplied by the shrink factor of :data:`CLIP_SHRINKS` that minimizes
    Σ(w − quant(w))² over the row (a grid search, per row; ties keep the wider range).
    """
    scale, zero, q_min, q_max = _minmax_grid(w, bits, symmetric)
    if clip:
        best = (quant(w, scale, zero, q_min, q_max) - w).square().sum(dim=1, keepdim=True)
        for shrink in CLIP_SHRINKS[1:]:
            s, z, _, _ = _minmax_grid(w * shrink, bits, symmetric)
            err = (quant(w, s, z, q_min, q_max) - w).square().sum(dim=1, keepdim=True)
            better = err < best
            scale, zero = torch.where(better, s, scale), torch.where(better, z, zero)
            best = torch.where(better, err, best)
    return scale, zero, q_min, q_max


def _minmax_grid(w: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor,
                                                                        int, int]:
    if symmetric:
        q_max = 2 ** (bits - 1) - 1
        scale = fp16_scale(w.abs().amax(dim=1, keepdim=True) / q_max)
        return scale, torch.zeros_like(scale), -q_max - 1, q_max
    q_max = 2**bits - 1
    lo = w.amin(dim=1, keepdim=True).clamp(max=0)
    hi = w.amax(dim=1, keepdim=True).clamp(min=0)
    scale = fp16_scale((hi - lo) / q_max)
    zero = torch.round(-lo / scale).clamp(0, q_max)
    return scale, zero, 0, q_max


def quant(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, q_min: int,
          q_max: int) -> torch.Tensor:
    """quant(w) = s · (clamp(round(w/s) + z, q_min, q_max) − z): the dequantized grid point."""
    q = torch.clamp(torch.round(w / scale) + zero, q_min, q_max)
    return scale * (q - zero)


def lower_triangular_inverse(L: torch.Tensor, leaf: int = 256) -> torch.Tensor:
    """L⁻¹ of lower-triangular ``L`` (… × n × n) by blocks: [[A, 0], [C, D]]⁻¹ =
    [[A⁻¹, 0], [−D⁻¹ C A⁻¹, D⁻¹]], two half-size inverses and two matmuls, down to ``leaf``
    columns solved directly: n³/3 multiply-adds, a third of a triangular solve against I."""
    n = L.shape[-1]
    if n <= leaf:
        eye = torch.eye(n, device=L.device, dtype=L.dtype).expand_as(L)
        return torch.linalg.solve_triangular(L, eye, upper=False)
    h = n // 2
    A_inv = lower_triangular_inverse(L[..., :h, :h], leaf)
    D_inv = lower_triangular_inverse(L[..., h:, h:], leaf)
    out = torch.zeros_like(L)
    out[..., :h, :h] = A_inv
    out[..., h:, h:] = D_inv
    out[..., h:, :h] = -(D_inv @ (L[..., h:, :h] @ A_inv))
    return out


def dampened_inverse_cholesky(H: torch.Tensor, percdamp: float = 0.01) -> tuple[torch.Tensor,
                                                                                  torch.Tensor]:
    """The upper Cholesky factor U of (H + λI)⁻¹ = UᵀU, and the mask of dead inputs (diag H = 0).

    ``H`` is one Hessian (d × d) or a stack of them (B × d × d); U and the mask have its leading
    shape. Dead inputs (never active in the calibration data) get H_jj = 1 and their weights are
    zeroed by the caller, as the reference does. λ = percdamp · mean(diag H), per Hessian.

    The reference computes U as chol(chol⁻¹(H)), three cubic steps. With J the reversal
    permutation and JHJ = L′L′ᵀ, H⁻¹ = (J L′⁻ᵀ J)(J L′⁻¹ J), and J L′⁻¹ J is upper triangular with
    a positive diagonal: it *is* U (the Cholesky factor is unique), from one Cholesky and one
    triangular inverse (:func:`lower_triangular_inverse`), half the reference's arithmetic.
    """
    H = H.float().clone()
    diag = H.diagonal(dim1=-2, dim2=-1)
    dead = diag == 0
    diag[dead] = 1
    diag.add_(percdamp * diag.mean(dim=-1, keepdim=True))
    L = torch.linalg.cholesky(H.flip(-2, -1))
    del H
    return lower_triangular_inverse(L).flip(-2, -1), dead


def activation_order(H: torch.Tensor) -> torch.Tensor:
    """GPTQ's activation order: the columns by decreasing H_jj (the reference's ``act_order`` /
    ``desc_act``), ties in column order, so every path permutes alike. ``H``: d × d or B × d × d."""
    return torch.argsort(H.diagonal(dim1=-2, dim2=-1), dim=-1, descending=True, stable=True)


def permuted_hessian(H: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """H with its rows and columns in the order ``perm`` (one Hessian and its permutation)."""
    return H[perm][:, perm]


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int | None = None,
                  symmetric: bool = False, block_size: int = 128, percdamp: float = 0.01,
                  mask: torch.Tensor | None = None,
                  grids: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
                  act_order: bool = False, clip: bool = False) -> torch.Tensor:
    """Ŵ: the weight ``W`` (d_row × d_col) quantized by GPTQ with Hessian ``H`` (d_col × d_col).

    ``group_size=None`` is one scale per output channel. ``mask`` (same shape as W, 1 = keep)
    forces pruned weights to zero while GPTQ compensates their error in the remaining columns
    (SparseGPT with a fixed mask). Returns the dequantized weight in W's dtype. ``grids``, if
    given, receives the (scale, zero) of every group in column order (d_row × 1 each; one pair
    for per-channel scales): the stored parts an export writes (``registry.IntHandler.encode``).

    ``act_order`` quantizes the columns by decreasing H_jj (:func:`activation_order`): those
    that matter most are rounded first, while most columns are still left to absorb their error.
    Groups stay static, as llm-compressor's ``actorder: weight`` (alias ``static``): each group's
    grid comes from its original weights (dead inputs zeroed) before the first column,
    so the stored layout is the plain one and every consumer loads it unchanged.

    ``clip`` picks every grid by MSE clipping (:func:`grid_params`) instead of min/max, on the
    weights that grid is computed from (the error-compensated ones of a group when it starts;
    the original ones with activation order or per-channel scales): GPTQ then rounds on the
    clipped grid, as GPTQ's reference with ``--mse`` or llm-compressor with an ``mse`` observer.
    """
    d_row, d_col = W.shape
    if group_size is not None and d_col % group_size:
        raise ValueError(f"group size {group_size} does not divide d_col={d_col}")
    if H.shape != (d_col, d_col):
        raise ValueError(f"Hessian of shape {tuple(H.shape)} does not match W of {tuple(W.shape)}")
    if group_size is not None and block_size % group_size:
        # a group must start and end inside one lazy block, so its scale sees the updated weights
        block_size = group_size if group_size > block_size else group_size * (block_size // group_size)
    out_dtype = W.dtype
    H = H.to(W.device)
    perm = activation_order(H) if act_order else None
    H_inv, dead = dampened_inverse_cholesky(H if perm is None else permuted_hessian(H, perm),
                                            percdamp)
    W = W.clone().float() if perm is None else W.float()[:, perm]
    W[:, dead] = 0
    keep = None if mask is None else mask.to(W.device, torch.float32)
    if perm is not None and keep is not None:
        keep = keep[:, perm]

    static = None
    if perm is not None:  # static groups: every grid from the original weights, now
        group = d_col if group_size is None else group_size
        original = W[:, torch.argsort(perm)]
        parts = [grid_params(original[:, g:g + group], bits, symmetric, clip)
                 for g in range(0, d_col, group)]
        if grids is not None:
            grids.extend((s, z) for s, z, _, _ in parts)
        _, _, q_min, q_max = parts[0]
        static = ([(s, z) for s, z, _, _ in parts], (perm // group).tolist())  # grids, owners
    elif group_size is None:  # per channel: one scale per row, from the whole row
        scale, zero, q_min, q_max = grid_params(W, bits, symmetric, clip)
        if grids is not None:
            grids.append((scale, zero))
    Q = torch.zeros_like(W)
    for i1 in range(0, d_col, block_size):
        i2 = min(i1 + block_size, d_col)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        H_inv1 = H_inv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            if static is not None:  # the grid of the column's original group
                scale, zero = static[0][static[1][i1 + i]]
            elif group_size is not None and (i1 + i) % group_size == 0:
                scale, zero, q_min, q_max = grid_params(W1[:, i:i + group_size], bits, symmetric,
                                                       clip)
                if grids is not None:
                    grids.append((scale, zero))
            w = W1[:, i]
            d = H_inv1[i, i]
            q = quant(w.unsqueeze(1), scale, zero, q_min, q_max).flatten()
            if keep is not None:
                q = q * keep[:, i1 + i]
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i + 1:].addcmul_(err.unsqueeze(1), H_inv1[i, i + 1:].unsqueeze(0),
                                   value=-1)  # eq. 3 within the block (one rounding)
            Err1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ H_inv[i1:i2, i2:]  # the lazy batch update of all later columns
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]  # back to the original column order
    return Q.to(out_dtype)


def output_error(X: torch.Tensor, W: torch.Tensor, W_hat: torch.Tensor) -> float:
    """‖XWᵀ − XŴᵀ‖_F², the layer-wise objective GPTQ minimizes (eq. 1)."""
    return float((X.float() @ (W.float() - W_hat.float()).t()).square().sum())


def hessian_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """tr((W − Ŵ) H (W − Ŵ)ᵀ): eq. 1 per calibration row (with H = 2XᵀX/n), a cheap proxy."""
    delta = (W.float() - W_hat.float()).to(H.device)
    return float(((delta @ H.float()) * delta).sum())
