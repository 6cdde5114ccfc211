"""Disentangle-aware contrastive loss (DACL), fused and memory-lean.

z = normalize([share_w; share_n; spec_w; spec_n]) (4B rows of D), S = z z^T / tau,
positives (share_w_i, share_n_i) both ways, loss = mean over rows of
logsumexp(S over the columns other than self and positive) - mean(positive S).

Everything that touches the (B, D) inputs (D = 196*768 in the paper model) is
one Triton pass over D-tiles: the kernel reads the four inputs straight from
their own pointers (no concatenated or normalised copy) and accumulates the
raw 4B x 4B Gram matrix G; row norms are sqrt(diag G). The backward is a
second pass, dX = (dG + dG^T) X, again reading X once. The masked
log-sum-exp / positive epilogue works on the 4B x 4B matrix only (plain torch,
shared with the torch path; its backward is written out on the saved Gram
matrix). Inputs to loss is ONE custom op (`endofuse::dacl_fused`, with
`endofuse::dacl_fused_backward`), so torch.compile / export see a single node.
Memory stays O(B*D): the inputs and their gradients, plus 4B x 4B matrices.
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


def launch_gram(x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor) -> torch.Tensor:
    """Gram matrix (4B, 4B) float32 of the stacked rows of four (B, D) tensors, one pass over D."""
    x0, x1, x2, x3 = (x.contiguous() for x in (x0, x1, x2, x3))  # kernels index densely
    n_rows, n_cols = x0.shape
    programs, chunk = _chunking(n_cols, x0.device)
    partial = torch.empty((programs, 4 * n_rows, 4 * n_rows), dtype=torch.float32, device=x0.device)
    _dacl_gram_kernel[(programs,)](
        x0, x1, x2, x3, partial, n_rows, n_cols, chunk,
        BLOCK_B=_block_b(n_rows), BLOCK_D=BLOCK_D, PRECISION=dot_precision(x0.dtype), **launch_options(4),
    )
    return partial.sum(0)


def launch_gram_backward(grad_gram: torch.Tensor, xs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Gradients of the four inputs from dL/dG: dX = (dG + dG^T) X, one pass over D."""
    xs = [x.contiguous() for x in xs]
    n_rows, n_cols = xs[0].shape
    sym = (grad_gram + grad_gram.t()).float().contiguous()
    grads = [torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in xs]
    programs, chunk = _chunking(n_cols, xs[0].device)
    _dacl_gram_backward_kernel[(programs,)](
        *xs, sym, *grads, n_rows, n_cols, chunk,
        BLOCK_B=_block_b(n_rows), BLOCK_D=BLOCK_D, PRECISION=dot_precision(torch.float32), **launch_options(8),
    )
    return tuple(grads)


@torch.library.custom_op("endofuse::dacl_fused", mutates_args=())
def dacl_fused(x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor,
               temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, gram): the DACL loss of four (B, D) inputs and the (4B, 4B) Gram matrix it came from.

    One op from inputs to loss, so compilers see no intermediate gradient to
    re-derive; the Gram matrix is returned only to be saved for the backward.
    """
    gram = launch_gram(x0, x1, x2, x3)
    return loss_from_gram(gram, x0.shape[0], temperature), gram


@dacl_fused.register_fake
def _(x0, x1, x2, x3, temperature):
    rows = 4 * x0.shape[0]
    return x0.new_empty((), dtype=torch.float32), x0.new_empty((rows, rows), dtype=torch.float32)


@torch.library.custom_op("endofuse::dacl_fused_backward", mutates_args=())
def dacl_fused_backward(
    grad_loss: torch.Tensor, gram: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input gradients: dL/dG of the small epilogue from the saved Gram matrix, then the pass over D."""
    grad_gram = loss_from_gram_backward(gram, x0.shape[0], temperature, grad_loss)
    return launch_gram_backward(grad_gram, [x0, x1, x2, x3])


@dacl_fused_backward.register_fake
def _(grad_loss, gram, x0, x1, x2, x3, temperature):
    return tuple(x.new_empty(x.shape) for x in (x0, x1, x2, x3))


def _setup_context(ctx, inputs, output):
    *xs, ctx.temperature = inputs
    ctx.save_for_backward(output[1], *xs)


def _backward(ctx, grad_loss, _grad_gram):
    gram, *xs = ctx.saved_tensors
    return (*dacl_fused_backward(grad_loss, gram, *xs, ctx.temperature), None)


dacl_fused.register_autograd(_backward, setup_context=_setup_context)


def _flatten_four(share_w, share_n, spec_w, spec_n) -> list[torch.Tensor]:
    feats = [t.flatten(1) for t in (share_w, share_n, spec_w, spec_n)]
    if feats[0].dim() != 2 or any(f.shape != feats[0].shape for f in feats):
        raise ValueError(f"dacl_loss expects four tensors of one shape, got {[tuple(t.shape) for t in feats]}")
    return feats


def _positive_columns(batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices 0..4B-1 and each row's positive column (-1 for the specific rows)."""
    idx = torch.arange(4 * batch, device=device)
    return idx, torch.where(idx < batch, idx + batch, torch.where(idx < 2 * batch, idx - batch, -1))


def excluded_mask(batch: int, device: torch.device) -> torch.Tensor:
    """(4B, 4B) bool: True on the diagonal and on the share_w/share_n positive pairs.

    Built from comparisons only (no host-to-device scalar copies), so it can be
    captured in a CUDA graph.
    """
    idx, positive = _positive_columns(batch, device)
    return (idx[:, None] == idx[None, :]) | (positive[:, None] == idx[None, :])


def _cosine_sims(gram: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(S = cos / tau, row norms, clamp-active mask) from the raw Gram matrix."""
    squared = torch.diagonal(gram)
    # clamp before sqrt: a zero row then gets a zero (not NaN) gradient, like F.normalize.
    norms = squared.clamp_min(NORM_EPS * NORM_EPS).sqrt()
    return gram / (norms[:, None] * norms[None, :]) / temperature, norms, squared >= NORM_EPS * NORM_EPS


def loss_from_gram(gram: torch.Tensor, batch: int, temperature: float) -> torch.Tensor:
    """DACL from the raw (4B, 4B) Gram matrix: cosine sims, masked log-sum-exp, positives."""
    sim, _, _ = _cosine_sims(gram, temperature)
    lse = torch.logsumexp(sim.masked_fill(excluded_mask(batch, gram.device), float("-inf")), dim=1)
    idx, positive = _positive_columns(batch, gram.device)
    has_positive = positive >= 0
    return lse.mean() - sim[idx[has_positive], positive[has_positive]].mean()


def loss_from_gram_backward(gram: torch.Tensor, batch: int, temperature: float,
                            grad_loss: torch.Tensor) -> torch.Tensor:
    """dL/dG of `loss_from_gram`, written out (custom-op bodies run without autograd).

    With A = dL/dS = softmax over the negatives / 4B - [positive] / 2B:
    dG_ij = A_ij / (n_i n_j tau) through S directly, plus, on the diagonal,
    dn_k / (2 n_k) with dn_k = -(sum_j A_kj S_kj + sum_i A_ik S_ik) / n_k.
    """
    sim, norms, active = _cosine_sims(gram, temperature)
    excluded = excluded_mask(batch, gram.device)
    idx, positive = _positive_columns(batch, gram.device)
    weights = torch.softmax(sim.masked_fill(excluded, float("-inf")), dim=1) / (4 * batch)
    weights = weights - (positive[:, None] == idx[None, :]).to(weights.dtype) / (2 * batch)
    weights = weights * grad_loss
    grad_gram = weights / (norms[:, None] * norms[None, :]) / temperature
    weighted = weights * sim
    grad_norms = -(weighted.sum(1) + weighted.sum(0)) / norms
    return grad_gram + torch.diag(grad_norms / (2 * norms) * active)


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
            return dacl_fused(*feats, float(temperature))[0]
        if backend == "triton":
            raise ValueError(f"dacl_loss backend='triton' takes batch <= {MAX_KERNEL_BATCH} float inputs, "
                             f"got {batch} {feats[0].dtype}")
    rows = torch.cat(feats, dim=0).float()
    return loss_from_gram(rows @ rows.t(), batch, temperature)
