"""DMAF-Net-style distillation from the full-modality path to the missing-NBI path.

DMAF-Net (incomplete multi-modal segmentation; code not published) teaches the
missing-modality features with two terms, restated here on the fused tokens
(B, N, D) that enter the decoder. The teacher (WLI + NBI) is detached: only the
missing-NBI path (student) learns from these terms (with DMAF fusion, only its
fusion: the model holds the WLI tokens fixed for the student).

* `relation_distill`: covariance consistency, global and local. Tokens are
  L2-normalised; local = per-sample channel covariance over the tokens, global =
  channel covariance over the batch of token-mean features; each gap is relative,
  gap(S, T) = ||S - T||_F^2 / (||S||_F^2 + ||T||_F^2), and the loss is
  0.5 * (mean_b gap(C_s,b, C_t,b) + gap(G_s, G_t)), in [0, 2]: 0 for matched
  relations, 1 when either side's tokens collapse to one vector. Relative because
  trained fused tokens share a large common vector (their spread over positions is
  1-5 % of their norm): after L2 normalisation the absolute gap is ~1e-9 even for
  a fully collapsed student, too small to teach or to read in the log.
* `prototype_distill`: class prototypes of the teacher taught to the student.
  Each token's class weights are the label fractions inside its 16 x 16 patch;
  a prototype is the weighted mean feature of a class over the batch; the loss
  is the mean over classes present of 1 - cos(P_student,c, P_teacher,c).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _covariance(x: torch.Tensor) -> torch.Tensor:
    """(..., M, D) -> (..., D, D): biased covariance over the M rows."""
    centered = x - x.mean(dim=-2, keepdim=True)
    return centered.transpose(-2, -1) @ centered / x.shape[-2]


def _relative_gap(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """||s - t||^2 / (||s||^2 + ||t||^2) over the last two dims (0 when both are zero)."""
    energy = s.pow(2).sum(dim=(-2, -1)) + t.pow(2).sum(dim=(-2, -1))
    return (s - t).pow(2).sum(dim=(-2, -1)) / energy.clamp(min=1e-30)


def relation_distill(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Global-local relative covariance gap between (B, N, D) token maps (teacher detached), in [0, 2]."""
    # float32: the covariance energies of normalised tokens underflow in half precision
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.detach().float(), dim=-1)
    local = _relative_gap(_covariance(s), _covariance(t)).mean()
    global_ = _relative_gap(_covariance(s.mean(dim=1)), _covariance(t.mean(dim=1)))
    return 0.5 * (local + global_)


def token_class_weights(target: torch.Tensor, grid: int, num_classes: int) -> torch.Tensor:
    """(B, H, W) labels -> (B, grid*grid, classes): each class's fraction of a token's patch."""
    onehot = F.one_hot(target.long(), num_classes).permute(0, 3, 1, 2).float()
    pooled = F.adaptive_avg_pool2d(onehot, grid)  # H, W are multiples of grid: exact patch means
    return pooled.flatten(2).transpose(1, 2)


def prototype_distill(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
                      num_classes: int) -> torch.Tensor:
    """Mean over present classes of 1 - cos(student prototype, teacher prototype (detached))."""
    grid = int(round(student.shape[1] ** 0.5))
    weights = token_class_weights(target, grid, num_classes).to(student.dtype)  # (B, N, C)
    mass = weights.sum(dim=(0, 1))  # (C,)
    present = mass > 0
    if not bool(present.any()):
        return student.new_zeros(())
    proto_s = torch.einsum("bnc,bnd->cd", weights, student) / mass.clamp(min=1e-12)[:, None]
    proto_t = torch.einsum("bnc,bnd->cd", weights, teacher.detach()) / mass.clamp(min=1e-12)[:, None]
    cos = F.cosine_similarity(proto_s[present], proto_t[present], dim=-1)
    return (1.0 - cos).mean()
