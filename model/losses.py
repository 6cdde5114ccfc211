"""Plain-torch reference losses of MM-EndoCL (docs/model.md).

These are the definitions the Triton kernels in `endofuse.kernels` are tested
against, so they favour clarity over speed and follow the reference exactly:

* `mmd`: biased MMD with a sum of `kernel_num` kernels whose bandwidths are
  spread by `kernel_mul` around a data-driven bandwidth computed on detached
  distances.
* `disentangle`: token-wise cosine terms (align / diff / orthogonality) and
  their mean `mi`.
* `dacl`: the disentangle-aware contrastive loss in its 4B-row masked
  log-sum-exp form (the positive is NOT in the denominator).
* `dice_loss`: TransUNet-style soft Dice.

How the terms are weighted into the training loss is the recipe's
(`endofuse.train.recipes`), written there once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

KERNELS = ("gaussian", "laplacian", "linear")


def _pairwise_distances(total: torch.Tensor, kernel: str) -> torch.Tensor:
    diff = total.unsqueeze(0) - total.unsqueeze(1)
    if kernel == "laplacian":
        return diff.abs().sum(-1)
    return (diff * diff).sum(-1)


def mmd(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel: str = "gaussian",
    kernel_mul: float = 2.0,
    kernel_num: int = 5,
) -> torch.Tensor:
    """Biased MMD estimate mean(K_xx + K_yy - K_xy - K_yx) between (n, d) samples.

    For `gaussian` (squared L2) and `laplacian` (L1) kernels the base bandwidth is
    sum(pairwise distances) / (n^2 - n) with n = 2B, computed on the detached
    distances; the i-th kernel uses bw * kernel_mul**i / kernel_mul**(kernel_num // 2).
    `linear` is the squared distance between the means.
    """
    if kernel not in KERNELS:
        raise ValueError(f"mmd kernel must be one of {KERNELS}, got {kernel!r}")
    if x.dim() != 2 or y.dim() != 2 or x.shape != y.shape:
        raise ValueError(f"mmd expects two (B, D) tensors of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if kernel == "linear":
        delta = x.mean(0) - y.mean(0)
        return delta.dot(delta)
    b = x.shape[0]
    total = torch.cat([x, y], dim=0)
    n = total.shape[0]
    dist = _pairwise_distances(total, kernel)
    bandwidth = dist.detach().sum() / (n * n - n)
    bandwidth = bandwidth / (kernel_mul ** (kernel_num // 2))
    kernels = sum(torch.exp(-dist / (bandwidth * kernel_mul**i)) for i in range(kernel_num))
    xx = kernels[:b, :b]
    yy = kernels[b:, b:]
    xy = kernels[:b, b:]
    yx = kernels[b:, :b]
    return torch.mean(xx + yy - xy - yx)


def _token_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last dim for (B, N, D) token maps -> (B, N)."""
    return F.cosine_similarity(a, b, dim=-1)


def disentangle(
    spec_w: torch.Tensor, spec_n: torch.Tensor, share_w: torch.Tensor, share_n: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Preliminary disentanglement terms on (B, N, D) token maps.

    align = 1 - mean cos(share_w, share_n)
    diff  = (1 + mean cos(spec_w, spec_n)) / 2
    orth_wli = mean cos(spec_w, share_w)^2, orth_nbi = mean cos(spec_n, share_n)^2
    mi = (align + diff + orth_wli + orth_nbi) / 4
    """
    align = 1.0 - _token_cosine(share_w, share_n).mean()
    diff = (1.0 + _token_cosine(spec_w, spec_n).mean()) / 2.0
    orth_wli = _token_cosine(spec_w, share_w).pow(2).mean()
    orth_nbi = _token_cosine(spec_n, share_n).pow(2).mean()
    mi = (align + diff + orth_wli + orth_nbi) / 4.0
    return {"align": align, "diff": diff, "orth_wli": orth_wli, "orth_nbi": orth_nbi, "mi": mi}


def dacl(
    share_w: torch.Tensor,
    share_n: torch.Tensor,
    spec_w: torch.Tensor,
    spec_n: torch.Tensor,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Disentangle-aware contrastive loss on flattened (B, tokens*dim) features.

    z = normalize([share_w; share_n; spec_w; spec_n]) (4B rows), S = z z^T / tau.
    Positives: (share_w_i, share_n_i) both ways. Negatives of a row: every column
    except itself and its positive (specific rows have no positive, so all other
    columns are negatives). Loss = mean over the 4B rows of logsumexp(negatives)
    minus the mean of the 2B positive similarities.
    """
    feats = [t.flatten(1) for t in (share_w, share_n, spec_w, spec_n)]
    b = feats[0].shape[0]
    if any(f.shape != feats[0].shape for f in feats):
        raise ValueError(f"dacl expects four tensors of one shape, got {[tuple(f.shape) for f in feats]}")
    z = F.normalize(torch.cat(feats, dim=0), dim=1)
    sim = z @ z.t() / temperature
    n = 4 * b
    idx = torch.arange(n, device=z.device)
    positive_col = torch.full((n,), -1, dtype=torch.long, device=z.device)
    positive_col[:b] = idx[:b] + b
    positive_col[b : 2 * b] = idx[:b]
    excluded = torch.eye(n, dtype=torch.bool, device=z.device)
    has_pos = positive_col >= 0
    excluded[idx[has_pos], positive_col[has_pos]] = True
    negatives = sim.masked_fill(excluded, float("-inf"))
    lse = torch.logsumexp(negatives, dim=1)
    positives = sim[idx[has_pos], positive_col[has_pos]]
    return lse.mean() - positives.mean()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """TransUNet soft Dice: per class over the whole batch, smooth 1e-5, mean over classes."""
    num_classes = num_classes or logits.shape[1]
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target.long(), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    smooth = 1e-5
    losses = []
    for c in range(num_classes):
        p, g = probs[:, c], onehot[:, c]
        intersect = (p * g).sum()
        losses.append(1.0 - (2 * intersect + smooth) / (p.pow(2).sum() + g.pow(2).sum() + smooth))
    return torch.stack(losses).mean()



def token_grid_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of per-token logits (B, g*g, C) against each token's class fractions of `target` (B, H, W).

    The soft targets are `target`'s one-hot map averaged over each token's patch
    (adaptive average pooling to g x g), so a token on the lesion border is half/half.
    """
    b, tokens, classes = logits.shape
    grid = int(round(tokens ** 0.5))
    onehot = F.one_hot(target.long(), classes).permute(0, 3, 1, 2).float()
    soft = F.adaptive_avg_pool2d(onehot, grid).flatten(2).transpose(1, 2)  # (B, g*g, C)
    return -(soft * F.log_softmax(logits, dim=-1)).sum(-1).mean()
