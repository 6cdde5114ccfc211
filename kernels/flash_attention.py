"""Fused multi-head attention: softmax(q k^T / sqrt(D)) v on (B, H, N, D) tensors.

FlashAttention-2 style (Dao 2023): the forward streams key/value tiles through
an online softmax and never holds the N x N scores; it stores only the output
and the row log-sum-exp. The backward recomputes the probabilities tile by tile
(one kernel for dK/dV looping over queries, one for dQ looping over keys).

Layers: `@triton.jit` kernels -> host launchers -> `torch.library.custom_op`s
(`endofuse::flash_attention`, `endofuse::flash_attention_backward`) with fake
and autograd registrations, so `torch.compile` / `torch.export` see one op ->
the `attention` dispatcher (Triton on CUDA, SDPA elsewhere).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from endofuse.kernels._backend import (
    autotune_enabled,
    dot_precision,
    launch_options,
    tl,
    triton,
    tuning_configs,
    use_triton,
)

LOG2E = 1.4426950408889634  # exp(x) == exp2(x * log2(e)); exp2 is the fast path on GPUs
HEAD_DIMS = (16, 32, 64, 128)  # power-of-two head sizes the kernels handle (tl.dot needs >= 16)


# Default tiles (interpreter, tests, ENDOFUSE_AUTOTUNE=0) and GPU autotune candidates
# (meta, num_warps, num_stages); configs whose shared memory does not fit are pruned by the autotuner.
FORWARD_DEFAULT = {"BLOCK_M": 128, "BLOCK_N": 64}
BACKWARD_DEFAULT = {"BLOCK_M": 64, "BLOCK_N": 64}
_FORWARD_CANDIDATES = [({"BLOCK_M": bm, "BLOCK_N": bn}, w, s) for bm, bn, w, s in
                       [(128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 4),
                        (64, 64, 4, 4), (128, 32, 4, 3), (64, 32, 4, 3)]]
_BACKWARD_CANDIDATES = [({"BLOCK_M": bm, "BLOCK_N": bn}, w, s) for bm, bn, w, s in
                        [(64, 64, 4, 2), (64, 64, 8, 3), (32, 64, 4, 3),
                         (64, 128, 8, 2), (128, 64, 8, 2), (32, 32, 4, 2)]]


@triton.jit
def _attn_fwd_kernel(
    Q_ptr, K_ptr, V_ptr, O_ptr, LSE_ptr,
    n_ctx, qk_scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    """One (query tile, batch*head) program.

    Q/K/V/O_ptr: contiguous (B*H, n_ctx, HEAD_DIM); LSE_ptr: (B*H, n_ctx) float32,
    the row log-sum-exp in log2 units (what the backward needs to rebuild P).
    qk_scale_log2: softmax scale * log2(e). Tails past n_ctx are masked.
    """
    pid_m = tl.program_id(0)
    # int64: B*H*N*D passes 2**31 for large batches (a known Triton overflow trap).
    base = tl.program_id(1).to(tl.int64) * n_ctx * HEAD_DIM
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < n_ctx
    q = tl.load(Q_ptr + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start_n in range(0, n_ctx, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < n_ctx
        kv_offsets = base + cols[:, None] * HEAD_DIM + offs_d[None, :]
        k = tl.load(K_ptr + kv_offsets, mask=col_ok[:, None], other=0.0)
        v = tl.load(V_ptr + kv_offsets, mask=col_ok[:, None], other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale_log2
        scores = tl.where(col_ok[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        p = tl.math.exp2(scores - m_new[:, None])
        correction = tl.math.exp2(m_i - m_new)
        l_i = l_i * correction + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * correction[:, None], input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(O_ptr + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], acc.to(O_ptr.dtype.element_ty),
             mask=row_ok[:, None])
    tl.store(LSE_ptr + tl.program_id(1).to(tl.int64) * n_ctx + offs_m, m_i + tl.math.log2(l_i), mask=row_ok)


@triton.jit
def _load_query_side(Q_ptr, DO_ptr, LSE_ptr, DELTA_ptr, base, stats_base, rows, n_ctx, offs_d, HEAD_DIM: tl.constexpr):
    """q, dO tiles and the per-row lse / delta of query rows `rows` (zeros past n_ctx)."""
    row_ok = rows < n_ctx
    offsets = base + rows[:, None] * HEAD_DIM + offs_d[None, :]
    q = tl.load(Q_ptr + offsets, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO_ptr + offsets, mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE_ptr + stats_base + rows, mask=row_ok, other=0.0)
    delta = tl.load(DELTA_ptr + stats_base + rows, mask=row_ok, other=0.0)
    return q, do, lse, delta, row_ok, offsets


@triton.jit
def _load_key_side(K_ptr, V_ptr, base, cols, n_ctx, offs_d, HEAD_DIM: tl.constexpr):
    """k, v tiles of key rows `cols` (zeros past n_ctx)."""
    col_ok = cols < n_ctx
    offsets = base + cols[:, None] * HEAD_DIM + offs_d[None, :]
    k = tl.load(K_ptr + offsets, mask=col_ok[:, None], other=0.0)
    v = tl.load(V_ptr + offsets, mask=col_ok[:, None], other=0.0)
    return k, v, col_ok, offsets


@triton.jit
def _probs_and_dscores(q, k, v, do, lse, delta, row_ok, col_ok, qk_scale_log2, PRECISION: tl.constexpr):
    """Recompute P = exp2(q k^T * scale*log2e - lse) for one tile, and dS = P * (dO v^T - delta)."""
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale_log2
    p = tl.where(row_ok[:, None] & col_ok[None, :], tl.math.exp2(scores - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    return p, p * (dp - delta[:, None])


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q_ptr, K_ptr, V_ptr, DO_ptr, LSE_ptr, DELTA_ptr, DK_ptr, DV_ptr,
    n_ctx, qk_scale_log2, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    """One (key tile, batch*head) program: dV = P^T dO, dK = scale * dS^T Q over all query tiles.

    DELTA_ptr: rowsum(dO * O) (B*H, n_ctx) float32; dS = P * (dO V^T - delta).
    """
    bh = tl.program_id(1).to(tl.int64)
    base = bh * n_ctx * HEAD_DIM
    offs_d = tl.arange(0, HEAD_DIM)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k, v, col_ok, kv_offsets = _load_key_side(K_ptr, V_ptr, base, cols, n_ctx, offs_d, HEAD_DIM)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    for start_m in range(0, n_ctx, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        q, do, lse, delta, row_ok, _ = _load_query_side(Q_ptr, DO_ptr, LSE_ptr, DELTA_ptr, base, bh * n_ctx, rows,
                                                        n_ctx, offs_d, HEAD_DIM)
        p, ds = _probs_and_dscores(q, k, v, do, lse, delta, row_ok, col_ok, qk_scale_log2, PRECISION)
        dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv, input_precision=PRECISION)
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q, dk, input_precision=PRECISION)
    tl.store(DK_ptr + kv_offsets, (dk * sm_scale).to(DK_ptr.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV_ptr + kv_offsets, dv.to(DV_ptr.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _attn_bwd_dq_kernel(
    Q_ptr, K_ptr, V_ptr, DO_ptr, LSE_ptr, DELTA_ptr, DQ_ptr,
    n_ctx, qk_scale_log2, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    """One (query tile, batch*head) program: dQ = scale * dS K over all key tiles."""
    bh = tl.program_id(1).to(tl.int64)
    base = bh * n_ctx * HEAD_DIM
    offs_d = tl.arange(0, HEAD_DIM)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    q, do, lse, delta, row_ok, q_offsets = _load_query_side(Q_ptr, DO_ptr, LSE_ptr, DELTA_ptr, base, bh * n_ctx, rows,
                                                            n_ctx, offs_d, HEAD_DIM)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start_n in range(0, n_ctx, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        k, v, col_ok, _ = _load_key_side(K_ptr, V_ptr, base, cols, n_ctx, offs_d, HEAD_DIM)
        _, ds = _probs_and_dscores(q, k, v, do, lse, delta, row_ok, col_ok, qk_scale_log2, PRECISION)
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    tl.store(DQ_ptr + q_offsets, (dq * sm_scale).to(DQ_ptr.dtype.element_ty), mask=row_ok[:, None])


_TUNE_KEY = ["n_ctx", "HEAD_DIM", "PRECISION"]
_tuned_fwd = triton.autotune(configs=tuning_configs(_FORWARD_CANDIDATES), key=_TUNE_KEY)(_attn_fwd_kernel)
_tuned_dkdv = triton.autotune(configs=tuning_configs(_BACKWARD_CANDIDATES), key=_TUNE_KEY)(_attn_bwd_dkdv_kernel)
_tuned_dq = triton.autotune(configs=tuning_configs(_BACKWARD_CANDIDATES), key=_TUNE_KEY)(_attn_bwd_dq_kernel)


def _launch(kernel, tuned, default: dict, grid, *args, **constexprs) -> None:
    """Run the autotuned kernel on a GPU, else the default tiles (interpreter / ENDOFUSE_AUTOTUNE=0)."""
    if autotune_enabled():
        tuned[grid](*args, **constexprs)
    else:
        kernel[grid(default)](*args, **constexprs, **default, **launch_options(4))


def launch_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   sm_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) for (B, H, N, D) q, k, v; lse is float32 (B, H, N) in log2 units."""
    batch, heads, n_ctx, head_dim = q.shape
    # Kernels index densely: whatever strides compile/export hand us, work on dense copies
    # and return dense outputs (the fake below promises the same).
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, n_ctx), dtype=torch.float32, device=q.device)
    _launch(
        _attn_fwd_kernel, _tuned_fwd, FORWARD_DEFAULT,
        lambda meta: (triton.cdiv(n_ctx, meta["BLOCK_M"]), batch * heads),
        q, k, v, out, lse, n_ctx, sm_scale * LOG2E, HEAD_DIM=head_dim, PRECISION=dot_precision(q.dtype),
    )
    return out, lse


@torch.library.custom_op("endofuse::flash_attention", mutates_args=())
def flash_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            sm_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) for (B, H, N, D) q, k, v; lse is float32 (B, H, N) in log2 units."""
    return launch_forward(q, k, v, sm_scale)


@flash_attention_forward.register_fake
def _(q, k, v, sm_scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("endofuse::flash_attention_backward", mutates_args=())
def flash_attention_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor, sm_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) by recomputing P from q, k and the saved lse."""
    batch, heads, n_ctx, head_dim = q.shape
    grad_out, q, k, v, out, lse = (t.contiguous() for t in (grad_out, q, k, v, out, lse))
    delta = (grad_out.float() * out.float()).sum(-1)  # rowsum(dO * O): one cheap pass, (B, H, N)
    dq, dk, dv = (torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))
    common = dict(HEAD_DIM=head_dim, PRECISION=dot_precision(q.dtype))
    _launch(
        _attn_bwd_dkdv_kernel, _tuned_dkdv, BACKWARD_DEFAULT,
        lambda meta: (triton.cdiv(n_ctx, meta["BLOCK_N"]), batch * heads),
        q, k, v, grad_out, lse, delta, dk, dv, n_ctx, sm_scale * LOG2E, sm_scale, **common,
    )
    _launch(
        _attn_bwd_dq_kernel, _tuned_dq, BACKWARD_DEFAULT,
        lambda meta: (triton.cdiv(n_ctx, meta["BLOCK_M"]), batch * heads),
        q, k, v, grad_out, lse, delta, dq, n_ctx, sm_scale * LOG2E, sm_scale, **common,
    )
    return dq, dk, dv


@flash_attention_backward.register_fake
def _(grad_out, q, k, v, out, lse, sm_scale):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, sm_scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.sm_scale = sm_scale


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = flash_attention_backward(grad_out, q, k, v, out, lse, ctx.sm_scale)
    return dq, dk, dv, None


flash_attention_forward.register_autograd(_backward, setup_context=_setup_context)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"attention expects q, k, v of one (B, H, N, D) shape, "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"attention expects one dtype for q, k, v, got {q.dtype}, {k.dtype}, {v.dtype}")


def kernel_supports(q: torch.Tensor) -> str | None:
    """None when the Triton kernels take `q`, else the reason they do not."""
    if q.shape[-1] not in HEAD_DIMS:
        return f"head dim {q.shape[-1]} not in {HEAD_DIMS}"
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"dtype {q.dtype} not supported"
    if q.dtype == torch.bfloat16 and not q.is_cuda:
        return "bfloat16 runs on GPU only (the Triton interpreter gets bf16 wrong)"
    return None


def _plain_inference_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """True for an eager call on real tensors that autograd will not record.

    Then the kernel is launched directly: the custom-op dispatcher costs tens of
    microseconds of Python per call, which the 24 attention calls of a forward
    pass would pay on every frame. Traced calls (compile, export: fake or
    functional tensor types) always go through the custom op.
    """
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    return not needs_grad and all(type(t) is torch.Tensor for t in (q, k, v)) and not torch.compiler.is_compiling()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for q, k, v of shape (B, H, N, D); no mask, no dropout.

    backend "auto": Triton on CUDA tensors whose head dim/dtype the kernels take,
    SDPA otherwise; "triton": always the kernels (error when they cannot run);
    "torch": SDPA.
    """
    _check_qkv(q, k, v)
    sm_scale = 1.0 / math.sqrt(q.shape[-1])
    if use_triton(q, backend):
        reason = kernel_supports(q)
        if reason is None:
            if _plain_inference_call(q, k, v):
                return launch_forward(q, k, v, sm_scale)[0]
            return flash_attention_forward(q, k, v, sm_scale)[0]
        if backend == "triton":
            raise ValueError(f"attention backend='triton': {reason}")
    return F.scaled_dot_product_attention(q, k, v, scale=sm_scale)
