"""Disentangle-aware contrastive loss (DACL), fused and memory-lean.

z = normalize([share_w; share_n; spec_w; spec_n]) (4B rows of D), S = z z^T / tau,
positives (share_w_i, share_n_i) both ways, loss = mean over rows of
logsumexp(S over the columns other than self and positive) - mean(positive S).

Everything that touches the (B, D) inputs (D = 196*768 in the paper model) is
one Triton pass over D-tiles: the kernel reads the four inputs straight from
their own pointers (no concatenated or normalised copy) and accumulates the
raw 4B x 4B Gram matrix G; row norms are sqrt(diag G). The backward is a
second pass, dX = (dG + dG^T) X, again reading X once. The masked
log-sum-exp / positive epilogue works on the 4B x 4B matrix only (torch
autograd, shared with the torch path). Memory stays O(B*D): the inputs and
their gradients, plus 4B x 4B matrices.
"""
from __future__ import annotations

import torch

from endofuse.kernels._backend import dot_precision, launch_options, split_count, tl, triton, use_triton

NORM_EPS = 1e-12  # F.normalize's eps: a zero row normalises to zero
MAX_KERNEL_BATCH = 32  # the kernels keep 10 (forward) / 16 (backward) B x B tiles in registers
BLOCK_D = 64


@triton.jit
def _gram_tile(acc, x_a, x_b, PRECISION: tl.constexpr):
    return tl.dot(x_a, tl.trans(x_b), acc, input_precision=PRECISION)


@triton.jit
def _store_block(OUT_ptr, block, i: tl.constexpr, j: tl.constexpr, n_rows, rows, row_ok):
    """Write a B x B block at block position (i, j) of a row-major (4B, 4B) matrix, and its transpose at (j, i)."""
    width = 4 * n_rows
    mask = row_ok[:, None] & row_ok[None, :]
    tl.store(OUT_ptr + (i * n_rows + rows[:, None]) * width + j * n_rows + rows[None, :], block, mask=mask)
    if i != j:
        tl.store(OUT_ptr + (j * n_rows + rows[None, :]) * width + i * n_rows + rows[:, None], block, mask=mask)


@triton.jit
def _dacl_gram_kernel(
    X0_ptr, X1_ptr, X2_ptr, X3_ptr, PART_ptr,
    n_rows, n_cols, chunk,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    """Partial Gram matrix of the stacked rows [X0; X1; X2; X3] over one D-chunk.

    X*_ptr: four contiguous (n_rows, n_cols) inputs; PART_ptr: (programs, 4n, 4n)
    float32 partial sums, one slab per program (summed on the host, so the
    result is deterministic); chunk: columns per program, a multiple of BLOCK_D.
    """
    pid = tl.program_id(0)
    rows = tl.arange(0, BLOCK_B)
    row_ok = rows < n_rows
    row_offsets = rows[:, None].to(tl.int64) * n_cols
    g00 = tl.zeros([BLOCK_B, BLOCK_B], dtype=tl.float32)
    g01 = tl.zeros([BLOCK_B, BLOCK_B], dtype=tl.float32)
    g02 = tl.zeros([BLOCK_B, BLOCK_B], dtype=tl.float32)
    g03 = tl.zeros([BLOCK_B, BLOCK_B], dtype=tl.float32)
    g11 = tl.zeros([BLOCK_B, BLOCK_B], dtype=tl.float32)
    g12 = tl.zeros([BLOCK_B, BLOCK_B], dtype=tl.float32)
    g13 = tl.zeros([BLOCK_B, BLOCK_B], dtype=tl.float32)
    g22 = tl.zeros([BLOCK_B, BLOCK_B], dtype=tl.float32)
    g23 = tl.zeros([BLOCK_B, BLOCK_B], dtype=tl.float32)
    g33 = tl.zeros([BLOCK_B, BLOCK_B], dtype=tl.float32)
    start = pid.to(tl.int64) * chunk
    for d0 in range(0, chunk, BLOCK_D):
        cols = start + d0 + tl.arange(0, BLOCK_D)
        mask = row_ok[:, None] & (cols < n_cols)[None, :]
        offsets = row_offsets + cols[None, :]
        x0 = tl.load(X0_ptr + offsets, mask=mask, other=0.0)
        x1 = tl.load(X1_ptr + offsets, mask=mask, other=0.0)
        x2 = tl.load(X2_ptr + offsets, mask=mask, other=0.0)
        x3 = tl.load(X3_ptr + offsets, mask=mask, other=0.0)
        g00 = _gram_tile(g00, x0, x0, PRECISION)
        g01 = _gram_tile(g01, x0, x1, PRECISION)
        g02 = _gram_tile(g02, x0, x2, PRECISION)
        g03 = _gram_tile(g03, x0, x3, PRECISION)
        g11 = _gram_tile(g11, x1, x1, PRECISION)
        g12 = _gram_tile(g12, x1, x2, PRECISION)
        g13 = _gram_tile(g13, x1, x3, PRECISION)
        g22 = _gram_tile(g22, x2, x2, PRECISION)
        g23 = _gram_tile(g23, x2, x3, PRECISION)
        g33 = _gram_tile(g33, x3, x3, PRECISION)
    out = PART_ptr + pid.to(tl.int64) * (16 * n_rows * n_rows)
    _store_block(out, g00, 0, 0, n_rows, rows, row_ok)
    _store_block(out, g01, 0, 1, n_rows, rows, row_ok)
    _store_block(out, g02, 0, 2, n_rows, rows, row_ok)
    _store_block(out, g03, 0, 3, n_rows, rows, row_ok)
    _store_block(out, g11, 1, 1, n_rows, rows, row_ok)
    _store_block(out, g12, 1, 2, n_rows, rows, row_ok)
    _store_block(out, g13, 1, 3, n_rows, rows, row_ok)
    _store_block(out, g22, 2, 2, n_rows, rows, row_ok)
    _store_block(out, g23, 2, 3, n_rows, rows, row_ok)
    _store_block(out, g33, 3, 3, n_rows, rows, row_ok)


@triton.jit
def _load_block(W_ptr, i: tl.constexpr, j: tl.constexpr, n_rows, rows, row_ok):
    width = 4 * n_rows
    mask = row_ok[:, None] & row_ok[None, :]
    return tl.load(W_ptr + (i * n_rows + rows[:, None]) * width + j * n_rows + rows[None, :], mask=mask, other=0.0)


@triton.jit
def _load_block_row(W_ptr, i: tl.constexpr, n_rows, rows, row_ok):
    """The four B x B blocks W[i, 0..3] of the (4B, 4B) weight matrix."""
    return (
        _load_block(W_ptr, i, 0, n_rows, rows, row_ok),
        _load_block(W_ptr, i, 1, n_rows, rows, row_ok),
        _load_block(W_ptr, i, 2, n_rows, rows, row_ok),
        _load_block(W_ptr, i, 3, n_rows, rows, row_ok),
    )


@triton.jit
def _grad_rows(w_row, x0, x1, x2, x3, PRECISION: tl.constexpr):
    """dX_i tile = sum_j W[i, j] @ X_j tile (W = dG + dG^T, float32)."""
    acc = tl.dot(w_row[0], x0, input_precision=PRECISION)
    acc = tl.dot(w_row[1], x1, acc, input_precision=PRECISION)
    acc = tl.dot(w_row[2], x2, acc, input_precision=PRECISION)
    return tl.dot(w_row[3], x3, acc, input_precision=PRECISION)


@triton.jit
def _dacl_gram_backward_kernel(
    X0_ptr, X1_ptr, X2_ptr, X3_ptr, W_ptr, D0_ptr, D1_ptr, D2_ptr, D3_ptr,
    n_rows, n_cols, chunk,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    """dX_i = sum_j W_ij X_j over one D-chunk for the four inputs; W: (4n, 4n) float32.

    The 16 W blocks are loaded once per program and stay in registers (B <= 32).
    """
    pid = tl.program_id(0)
    rows = tl.arange(0, BLOCK_B)
    row_ok = rows < n_rows
    row_offsets = rows[:, None].to(tl.int64) * n_cols
    w0 = _load_block_row(W_ptr, 0, n_rows, rows, row_ok)
    w1 = _load_block_row(W_ptr, 1, n_rows, rows, row_ok)
    w2 = _load_block_row(W_ptr, 2, n_rows, rows, row_ok)
    w3 = _load_block_row(W_ptr, 3, n_rows, rows, row_ok)
    start = pid.to(tl.int64) * chunk
    for d0 in range(0, chunk, BLOCK_D):
        cols = start + d0 + tl.arange(0, BLOCK_D)
        mask = row_ok[:, None] & (cols < n_cols)[None, :]
        offsets = row_offsets + cols[None, :]
        x0 = tl.load(X0_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        x1 = tl.load(X1_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(X2_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        x3 = tl.load(X3_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        tl.store(D0_ptr + offsets, _grad_rows(w0, x0, x1, x2, x3, PRECISION).to(D0_ptr.dtype.element_ty), mask=mask)
        tl.store(D1_ptr + offsets, _grad_rows(w1, x0, x1, x2, x3, PRECISION).to(D1_ptr.dtype.element_ty), mask=mask)
        tl.store(D2_ptr + offsets, _grad_rows(w2, x0, x1, x2, x3, PRECISION).to(D2_ptr.dtype.element_ty), mask=mask)
        tl.store(D3_ptr + offsets, _grad_rows(w3, x0, x1, x2, x3, PRECISION).to(D3_ptr.dtype.element_ty), mask=mask)


def _block_b(n_rows: int) -> int:
    return max(16, triton.next_power_of_2(n_rows))


def _chunking(n_cols: int, device: torch.device) -> tuple[int, int]:
    """(programs, columns per program) splitting D across about one program per SM."""
    tiles = triton.cdiv(n_cols, BLOCK_D)
    programs = split_count(device, tiles)
    chunk = triton.cdiv(tiles, programs) * BLOCK_D
    return triton.cdiv(n_cols, chunk), chunk


@torch.library.custom_op("endofuse::dacl_gram", mutates_args=())
def dacl_gram(x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor) -> torch.Tensor:
    """Gram matrix (4B, 4B) float32 of the stacked rows of four contiguous (B, D) tensors."""
    x0, x1, x2, x3 = (x.contiguous() for x in (x0, x1, x2, x3))  # kernels index densely
    n_rows, n_cols = x0.shape
    programs, chunk = _chunking(n_cols, x0.device)
    partial = torch.empty((programs, 4 * n_rows, 4 * n_rows), dtype=torch.float32, device=x0.device)
    _dacl_gram_kernel[(programs,)](
        x0, x1, x2, x3, partial, n_rows, n_cols, chunk,
        BLOCK_B=_block_b(n_rows), BLOCK_D=BLOCK_D, PRECISION=dot_precision(x0.dtype), **launch_options(4),
    )
    return partial.sum(0)


@dacl_gram.register_fake
def _(x0, x1, x2, x3):
    return x0.new_empty((4 * x0.shape[0], 4 * x0.shape[0]), dtype=torch.float32)


@torch.library.custom_op("endofuse::dacl_gram_backward", mutates_args=())
def dacl_gram_backward(
    grad_gram: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the four inputs: dX = (dG + dG^T) X, one pass over D."""
    x0, x1, x2, x3 = (x.contiguous() for x in (x0, x1, x2, x3))
    n_rows, n_cols = x0.shape
    sym = (grad_gram + grad_gram.t()).float().contiguous()
    grads = [torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (x0, x1, x2, x3)]
    programs, chunk = _chunking(n_cols, x0.device)
    _dacl_gram_backward_kernel[(programs,)](
        x0, x1, x2, x3, sym, *grads, n_rows, n_cols, chunk,
        BLOCK_B=_block_b(n_rows), BLOCK_D=BLOCK_D, PRECISION=dot_precision(torch.float32), **launch_options(8),
    )
    return tuple(grads)


@dacl_gram_backward.register_fake
def _(grad_gram, x0, x1, x2, x3):
    return tuple(x.new_empty(x.shape) for x in (x0, x1, x2, x3))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_gram):
    return dacl_gram_backward(grad_gram, *ctx.saved_tensors)


dacl_gram.register_autograd(_backward, setup_context=_setup_context)


def _flatten_four(share_w, share_n, spec_w, spec_n) -> list[torch.Tensor]:
    feats = [t.flatten(1) for t in (share_w, share_n, spec_w, spec_n)]
    if feats[0].dim() != 2 or any(f.shape != feats[0].shape for f in feats):
        raise ValueError(f"dacl_loss expects four tensors of one shape, got {[tuple(t.shape) for t in feats]}")
    return feats


def excluded_mask(batch: int, device: torch.device) -> torch.Tensor:
    """(4B, 4B) bool: True on the diagonal and on the share_w/share_n positive pairs."""
    excluded = torch.eye(4 * batch, dtype=torch.bool, device=device)
    idx = torch.arange(batch, device=device)
    excluded[idx, idx + batch] = True
    excluded[idx + batch, idx] = True
    return excluded


def loss_from_gram(gram: torch.Tensor, batch: int, temperature: float) -> torch.Tensor:
    """DACL from the raw (4B, 4B) Gram matrix: cosine sims, masked log-sum-exp, positives."""
    # clamp before sqrt: a zero row then gets a zero (not NaN) gradient, like F.normalize.
    norms = torch.diagonal(gram).clamp_min(NORM_EPS * NORM_EPS).sqrt()
    sim = gram / (norms[:, None] * norms[None, :]) / temperature
    lse = torch.logsumexp(sim.masked_fill(excluded_mask(batch, gram.device), float("-inf")), dim=1)
    idx = torch.arange(batch, device=gram.device)
    positives = torch.cat([sim[idx, idx + batch], sim[idx + batch, idx]])
    return lse.mean() - positives.mean()


def dacl_loss(
    share_w: torch.Tensor,
    share_n: torch.Tensor,
    spec_w: torch.Tensor,
    spec_n: torch.Tensor,
    temperature: float = 0.1,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """DACL on four (B, ...) feature maps (flattened per sample); returns a float32 scalar.

    backend "auto": the fused Triton pass on CUDA tensors (B <= 32), torch elsewhere.
    """
    feats = _flatten_four(share_w, share_n, spec_w, spec_n)
    batch = feats[0].shape[0]
    if use_triton(feats[0], backend):
        if batch <= MAX_KERNEL_BATCH and feats[0].dtype in (torch.float32, torch.float16, torch.bfloat16):
            gram = dacl_gram(*(f.contiguous() for f in feats))
            return loss_from_gram(gram, batch, temperature)
        if backend == "triton":
            raise ValueError(f"dacl_loss backend='triton' takes batch <= {MAX_KERNEL_BATCH} float inputs, got {batch} {feats[0].dtype}")
    rows = torch.cat(feats, dim=0).float()
    return loss_from_gram(rows @ rows.t(), batch, temperature)
