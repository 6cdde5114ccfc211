"""Biased multi-kernel MMD between two (B, D) samples, fused.

Same definition as `endofuse.model.losses.mmd`: a sum of `kernel_num` Gaussian
(squared L2) or Laplacian (L1) kernels around a data-driven bandwidth
bw = sum(dist) / (n^2 - n) / kernel_mul**(kernel_num // 2), computed on the
detached distances, then mean(K_xx + K_yy - K_xy - K_yx).

Triton path, two ops each with its own backward kernel:
* `endofuse::pairwise_distance`: (n, n) distances of the stacked rows, exact
  differences (no |a|^2 + |b|^2 - 2ab cancellation), tiled over D, never
  building the reference's (n, n, D) difference tensor;
* `endofuse::mmd_reduce`: bandwidth, the kernel sum and the signed block mean
  in one program (n = 2B <= 256).
The torch path builds the same distances from a Gram matrix / `torch.cdist`.
"""
from __future__ import annotations

import torch

from endofuse.kernels._backend import launch_options, tl, triton, use_triton

KERNELS = ("gaussian", "laplacian", "linear")
MAX_KERNEL_ROWS = 256  # mmd_reduce holds the whole (n, n) matrix in one program
TILE_ROWS, TILE_D = 16, 32


@triton.jit
def _pairwise_distance_kernel(X_ptr, DIST_ptr, n_rows, n_cols, L1: tl.constexpr, BLOCK_R: tl.constexpr,
                              BLOCK_D: tl.constexpr):
    """DIST[i, j] = sum_d |x_id - x_jd| (L1) or (x_id - x_jd)^2 for one (i-tile, j-tile); X: (n_rows, n_cols)."""
    rows_i = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rows_j = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    ok_i, ok_j = rows_i < n_rows, rows_j < n_rows
    acc = tl.zeros([BLOCK_R, BLOCK_R], dtype=tl.float32)
    for d0 in range(0, n_cols, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        col_ok = cols < n_cols
        xi = tl.load(X_ptr + rows_i[:, None] * n_cols + cols[None, :], mask=ok_i[:, None] & col_ok[None, :], other=0.0)
        xj = tl.load(X_ptr + rows_j[:, None] * n_cols + cols[None, :], mask=ok_j[:, None] & col_ok[None, :], other=0.0)
        diff = xi.to(tl.float32)[:, None, :] - xj.to(tl.float32)[None, :, :]
        if L1:
            acc += tl.sum(tl.abs(diff), axis=2)
        else:
            acc += tl.sum(diff * diff, axis=2)
    tl.store(DIST_ptr + rows_i[:, None] * n_rows + rows_j[None, :], acc, mask=ok_i[:, None] & ok_j[None, :])


@triton.jit
def _pairwise_distance_backward_kernel(
    X_ptr, W_ptr, DX_ptr, n_rows, n_cols, L1: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr
):
    """dX[i, d] = sum_j W[i, j] * g(x_id - x_jd), g = 2*diff (L2^2) or sign(diff) (L1); W = dDIST + dDIST^T."""
    rows_i = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    ok_i, col_ok = rows_i < n_rows, cols < n_cols
    xi = tl.load(X_ptr + rows_i[:, None] * n_cols + cols[None, :], mask=ok_i[:, None] & col_ok[None, :], other=0.0)
    xi = xi.to(tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    for j0 in range(0, n_rows, BLOCK_R):
        rows_j = j0 + tl.arange(0, BLOCK_R)
        ok_j = rows_j < n_rows
        xj = tl.load(X_ptr + rows_j[:, None] * n_cols + cols[None, :], mask=ok_j[:, None] & col_ok[None, :], other=0.0)
        w = tl.load(W_ptr + rows_i[:, None] * n_rows + rows_j[None, :], mask=ok_i[:, None] & ok_j[None, :], other=0.0)
        diff = xi[:, None, :] - xj.to(tl.float32)[None, :, :]
        if L1:
            slope = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0))
        else:
            slope = 2.0 * diff
        acc += tl.sum(w[:, :, None] * slope, axis=1)
    tl.store(DX_ptr + rows_i[:, None] * n_cols + cols[None, :], acc.to(DX_ptr.dtype.element_ty),
             mask=ok_i[:, None] & col_ok[None, :])


@triton.jit
def _load_distances(DIST_ptr, n_rows, batch, BLOCK_N: tl.constexpr):
    """The (n, n) distances (0 outside), the validity mask and the +1/-1 sample signs."""
    idx = tl.arange(0, BLOCK_N)
    ok = (idx < n_rows)[:, None] & (idx < n_rows)[None, :]
    dist = tl.load(DIST_ptr + idx[:, None] * n_rows + idx[None, :], mask=ok, other=0.0)
    sign = tl.where(idx < batch, 1.0, -1.0)
    return dist, ok, sign[:, None] * sign[None, :]


@triton.jit
def _mmd_reduce_kernel(DIST_ptr, OUT_ptr, n_rows, batch, kernel_mul, bandwidth_divisor, KERNEL_NUM: tl.constexpr,
                       BLOCK_N: tl.constexpr):
    """OUT = sum_ij s_i s_j sum_t exp(-d_ij / (bw * mul^t)) / batch^2 (s = +1 for x rows, -1 for y rows)."""
    dist, ok, signs = _load_distances(DIST_ptr, n_rows, batch, BLOCK_N)
    scale = tl.sum(tl.sum(dist, axis=1), axis=0) / (n_rows * n_rows - n_rows) / bandwidth_divisor
    kernels = tl.zeros([BLOCK_N, BLOCK_N], dtype=tl.float32)
    for _ in tl.static_range(KERNEL_NUM):
        kernels += tl.exp(-dist / scale)
        scale = scale * kernel_mul
    total = tl.sum(tl.sum(tl.where(ok, signs * kernels, 0.0), axis=1), axis=0)
    tl.store(OUT_ptr, total / (batch * batch))


@triton.jit
def _mmd_reduce_backward_kernel(
    DIST_ptr, GRAD_ptr, DDIST_ptr, n_rows, batch, kernel_mul, bandwidth_divisor, KERNEL_NUM: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dDIST = grad * s_i s_j / batch^2 * sum_t -exp(-d / bw_t) / bw_t (the bandwidth is detached)."""
    dist, ok, signs = _load_distances(DIST_ptr, n_rows, batch, BLOCK_N)
    scale = tl.sum(tl.sum(dist, axis=1), axis=0) / (n_rows * n_rows - n_rows) / bandwidth_divisor
    slope = tl.zeros([BLOCK_N, BLOCK_N], dtype=tl.float32)
    for _ in tl.static_range(KERNEL_NUM):
        slope -= tl.exp(-dist / scale) / scale
        scale = scale * kernel_mul
    grad = tl.load(GRAD_ptr)
    idx = tl.arange(0, BLOCK_N)
    tl.store(DDIST_ptr + idx[:, None] * n_rows + idx[None, :], grad * signs * slope / (batch * batch), mask=ok)


@torch.library.custom_op("endofuse::pairwise_distance", mutates_args=())
def pairwise_distance(total: torch.Tensor, l1: bool) -> torch.Tensor:
    """(n, n) float32 L1 or squared-L2 distances between the rows of a contiguous (n, D) tensor."""
    total = total.contiguous()  # kernels index densely
    n_rows, n_cols = total.shape
    dist = torch.empty((n_rows, n_rows), dtype=torch.float32, device=total.device)
    grid = (triton.cdiv(n_rows, TILE_ROWS), triton.cdiv(n_rows, TILE_ROWS))
    _pairwise_distance_kernel[grid](total, dist, n_rows, n_cols, L1=l1, BLOCK_R=TILE_ROWS, BLOCK_D=TILE_D,
                                    **launch_options(4))
    return dist


@pairwise_distance.register_fake
def _(total, l1):
    return total.new_empty((total.shape[0], total.shape[0]), dtype=torch.float32)


@torch.library.custom_op("endofuse::pairwise_distance_backward", mutates_args=())
def pairwise_distance_backward(grad_dist: torch.Tensor, total: torch.Tensor, l1: bool) -> torch.Tensor:
    total = total.contiguous()
    n_rows, n_cols = total.shape
    sym = (grad_dist + grad_dist.t()).float().contiguous()
    grad = torch.empty(total.shape, dtype=total.dtype, device=total.device)
    grid = (triton.cdiv(n_rows, TILE_ROWS), triton.cdiv(n_cols, TILE_D))
    _pairwise_distance_backward_kernel[grid](total, sym, grad, n_rows, n_cols, L1=l1, BLOCK_R=TILE_ROWS, BLOCK_D=TILE_D,
                                             **launch_options(4))
    return grad


@pairwise_distance_backward.register_fake
def _(grad_dist, total, l1):
    return total.new_empty(total.shape)


def _distance_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.l1 = inputs[1]


def _distance_backward(ctx, grad_dist):
    return pairwise_distance_backward(grad_dist, ctx.saved_tensors[0], ctx.l1), None


pairwise_distance.register_autograd(_distance_backward, setup_context=_distance_setup)


def _reduce_launch(dist: torch.Tensor, batch: int, kernel_mul: float, kernel_num: int) -> dict:
    return dict(
        n_rows=dist.shape[0], batch=batch, kernel_mul=float(kernel_mul),
        bandwidth_divisor=float(kernel_mul ** (kernel_num // 2)),
        KERNEL_NUM=kernel_num, BLOCK_N=max(16, triton.next_power_of_2(dist.shape[0])),
    )


@torch.library.custom_op("endofuse::mmd_reduce", mutates_args=())
def mmd_reduce(dist: torch.Tensor, batch: int, kernel_mul: float, kernel_num: int) -> torch.Tensor:
    """Biased MMD (float32 scalar) from the (2B, 2B) distances of [x; y]."""
    out = torch.empty((), dtype=torch.float32, device=dist.device)
    _mmd_reduce_kernel[(1,)](dist.contiguous(), out, **_reduce_launch(dist, batch, kernel_mul, kernel_num),
                             **launch_options(8))
    return out


@mmd_reduce.register_fake
def _(dist, batch, kernel_mul, kernel_num):
    return dist.new_empty((), dtype=torch.float32)


@torch.library.custom_op("endofuse::mmd_reduce_backward", mutates_args=())
def mmd_reduce_backward(grad: torch.Tensor, dist: torch.Tensor, batch: int, kernel_mul: float,
                        kernel_num: int) -> torch.Tensor:
    grad_dist = torch.empty(dist.shape, dtype=torch.float32, device=dist.device)
    _mmd_reduce_backward_kernel[(1,)](
        dist.contiguous(), grad.float().contiguous(), grad_dist,
        **_reduce_launch(dist, batch, kernel_mul, kernel_num), **launch_options(8),
    )
    return grad_dist


@mmd_reduce_backward.register_fake
def _(grad, dist, batch, kernel_mul, kernel_num):
    return dist.new_empty(dist.shape, dtype=torch.float32)


def _reduce_setup(ctx, inputs, output):
    dist, ctx.batch, ctx.kernel_mul, ctx.kernel_num = inputs
    ctx.save_for_backward(dist)


def _reduce_backward(ctx, grad):
    return mmd_reduce_backward(grad, ctx.saved_tensors[0], ctx.batch, ctx.kernel_mul, ctx.kernel_num), None, None, None


mmd_reduce.register_autograd(_reduce_backward, setup_context=_reduce_setup)


def _check(x: torch.Tensor, y: torch.Tensor, kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"mmd kernel must be one of {KERNELS}, got {kernel!r}")
    if x.dim() != 2 or x.shape != y.shape:
        raise ValueError(f"mmd_loss expects two (B, D) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def pairwise_distances(total: torch.Tensor, kernel: str) -> torch.Tensor:
    """Torch path: (n, n) squared-L2 (gaussian) or L1 (laplacian) distances with an exact zero diagonal."""
    if kernel == "laplacian":
        return torch.cdist(total, total, p=1.0)
    sq = (total * total).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (total @ total.t())).clamp_min(0.0)
    off_diagonal = 1.0 - torch.eye(total.shape[0], dtype=total.dtype, device=total.device)
    return d2 * off_diagonal


def mmd_from_distances(dist: torch.Tensor, batch: int, kernel_mul: float, kernel_num: int) -> torch.Tensor:
    """Torch path: biased MMD from (2B, 2B) distances, the kernel sum and the signed block mean."""
    n = dist.shape[0]
    bandwidth = dist.detach().sum() / (n * n - n) / (kernel_mul ** (kernel_num // 2))
    kernels = sum(torch.exp(-dist / (bandwidth * kernel_mul**i)) for i in range(kernel_num))
    sign = torch.ones(n, dtype=dist.dtype, device=dist.device)
    sign[batch:] = -1.0
    # xx + yy - xy - yx == sign_i * sign_j * K_ij, averaged over the B x B blocks.
    return (sign[:, None] * sign[None, :] * kernels).sum() / (batch * batch)


def mmd_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel: str = "gaussian",
    kernel_mul: float = 2.0,
    kernel_num: int = 5,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Biased MMD between samples x and y, each (B, D); returns a float32 scalar.

    backend "auto": the Triton kernels on CUDA tensors (2B <= 256), torch elsewhere.
    The linear kernel (squared distance of the means) is plain torch on every backend.
    """
    _check(x, y, kernel)
    batch = x.shape[0]
    if kernel == "linear":
        delta = x.float().mean(0) - y.float().mean(0)
        return delta.dot(delta)
    if use_triton(x, backend):
        if 2 * batch <= MAX_KERNEL_ROWS:
            dist = pairwise_distance(torch.cat([x, y]).contiguous(), kernel == "laplacian")
            return mmd_reduce(dist, batch, float(kernel_mul), int(kernel_num))
        if backend == "triton":
            raise ValueError(f"mmd_loss backend='triton' takes 2B <= {MAX_KERNEL_ROWS} rows, got {2 * batch}")
    return mmd_from_distances(pairwise_distances(torch.cat([x, y]).float(), kernel), batch, kernel_mul, kernel_num)
