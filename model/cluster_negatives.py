"""CM-CGNS cluster-guided negatives for DACL (`negatives="cluster"`).

Facts from the public CM-CGNS code (violet-42/CM-CGNS, `kmeans_cluster`); the
code here is our own:

* online k-means over the contrastive features with cosine similarity and
  momentum-updated centroids, initialised by a farthest-point heuristic from
  the data;
* each feature's second-nearest centroid is an extra, hard negative whose logit
  is multiplied by `hard_weight` (3 in the paper);
* pairs in the same cluster are likely false negatives: they are left out of
  the negatives, and a small margin ("BML") loss keeps them between the positive
  and the negatives: relu(delta + alpha) + relu(-delta - beta) with
  delta = cos(z_i, z_j) - cos(z_i, positive_i), alpha 0.2, beta 0.5.

Decisions for this project (documented in docs/training.md):
* the features are DACL's rows (flattened, L2-normalised token maps), so the hard
  negatives live in the space DACL contrasts;
* a centroid moves to `momentum * c + (1 - momentum) * mean(members)` (CM-CGNS adds
  the members' sum at a rate of 0.001; the mean makes the rate independent of the
  batch size); clusters without members this step keep their centroid;
* initialisation fills the centroids from the first batch(es), farthest point first,
  with no similarity threshold; until every centroid is set DACL runs as `batch`;
* false negatives are masked only between rows of the same kind (shared vs
  shared, specific vs specific): a shared and a specific feature of one scene are
  meant to differ, and DACL keeps pushing them apart;
* the margin loss is the mean over the masked pairs of rows that have a positive
  (CM-CGNS averages over all pairs, the unmasked ones adding a constant).
Under torchrun the rows are gathered from every rank before the update, so all
ranks keep identical centroids.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class OnlineKMeans(nn.Module):
    """`k` centroids of `dim`-vectors under cosine similarity; buffers, so checkpoints hold them."""

    def __init__(self, k: int, dim: int, momentum: float = 0.9):
        super().__init__()
        if k < 2:
            raise ValueError(f"cluster count must be >= 2 (a second-nearest centroid is needed), got {k}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"centroid momentum must be in [0, 1), got {momentum}")
        self.k, self.momentum = k, momentum
        self.register_buffer("centroids", torch.zeros(k, dim))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def ready(self) -> bool:
        return int(self.filled) >= self.k

    def similarities(self, z: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of rows (R, dim) to every centroid -> (R, k)."""
        return F.normalize(z, dim=1) @ F.normalize(self.centroids, dim=1).t()

    def nearest_two(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(nearest, second-nearest) centroid index per row."""
        top = torch.topk(self.similarities(z), k=2, dim=1).indices
        return top[:, 0], top[:, 1]

    @torch.no_grad()
    def update(self, z: torch.Tensor) -> None:
        """Initialise (farthest point first) or move the centroids with the rows `z` (detached)."""
        z = _gather_rows(F.normalize(z.detach().float(), dim=1))
        if not self.ready:
            self._fill(z)
            return
        nearest = self.similarities(z).argmax(dim=1)
        onehot = F.one_hot(nearest, self.k).to(z.dtype)  # (R, k)
        counts = onehot.sum(0)
        means = (onehot.t() @ z) / counts.clamp(min=1)[:, None]
        moved = self.momentum * self.centroids + (1.0 - self.momentum) * means
        self.centroids.copy_(torch.where(counts[:, None] > 0, moved, self.centroids))

    def _fill(self, z: torch.Tensor) -> None:
        start = int(self.filled)
        chosen = [self.centroids[i] for i in range(start)]
        available = list(range(z.shape[0]))
        while available and len(chosen) < self.k:
            if not chosen:
                pick = available[0]
            else:  # the row least similar (max cosine) to every centroid chosen so far
                sims = z[available] @ torch.stack(chosen).t()
                pick = available[int(sims.max(dim=1).values.argmin())]
            chosen.append(z[pick])
            available.remove(pick)
        for i in range(start, len(chosen)):
            self.centroids[i] = chosen[i]
        self.filled.fill_(len(chosen))


def _gather_rows(z: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, in rank order (ranks may hold different counts: modality dropout)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    world = dist.get_world_size()
    counts = [torch.zeros(1, dtype=torch.long, device=z.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([z.shape[0]], device=z.device))
    most = int(max(c.item() for c in counts))
    padded = torch.zeros(most, z.shape[1], dtype=z.dtype, device=z.device)
    padded[: z.shape[0]] = z
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(c.item())] for part, c in zip(parts, counts, strict=True)])


def false_negative_mask(clusters: torch.Tensor, batch: int) -> torch.Tensor:
    """(4B, 4B) bool: same cluster, same kind (rows :2B shared, 2B: specific), not self, not the positive."""
    n = clusters.shape[0]
    idx = torch.arange(n, device=clusters.device)
    same_cluster = clusters[:, None] == clusters[None, :]
    shared = idx < 2 * batch
    same_kind = shared[:, None] == shared[None, :]
    positive = torch.zeros(n, n, dtype=torch.bool, device=clusters.device)
    positive[idx[:batch], idx[:batch] + batch] = True
    positive[idx[:batch] + batch, idx[:batch]] = True
    return same_cluster & same_kind & ~positive & ~torch.eye(n, dtype=torch.bool, device=clusters.device)


def margin_loss(delta: torch.Tensor, alpha: float = 0.2, beta: float = 0.5) -> torch.Tensor:
    """CM-CGNS's BML term: zero while -beta <= delta <= -alpha."""
    return F.relu(delta + alpha) + F.relu(-delta - beta)


def cluster_dacl(
    share_w: torch.Tensor,
    share_n: torch.Tensor,
    spec_w: torch.Tensor,
    spec_n: torch.Tensor,
    kmeans: OnlineKMeans,
    temperature: float = 0.1,
    hard_weight: float = 3.0,
    alpha: float = 0.2,
    beta: float = 0.5,
) -> dict[str, torch.Tensor]:
    """{"dacl": DACL with cluster-guided negatives, "cgns": the false-negative margin loss}.

    Rows and positives as in `losses.dacl`. With the k-means ready, each row's
    negatives lose its same-cluster false negatives and gain its second-nearest
    centroid (detached) with logit hard_weight * cos / tau. Before the k-means is
    ready the result equals `losses.dacl` and cgns is 0. Call `kmeans.update` after.
    """
    feats = [t.flatten(1) for t in (share_w, share_n, spec_w, spec_n)]
    b = feats[0].shape[0]
    z = F.normalize(torch.cat(feats, dim=0), dim=1)
    n = 4 * b
    cos = z @ z.t()
    sim = cos / temperature
    idx = torch.arange(n, device=z.device)
    positive_col = torch.cat([idx[:b] + b, idx[:b]])  # rows :2B have a positive
    excluded = torch.eye(n, dtype=torch.bool, device=z.device)
    excluded[idx[: 2 * b], positive_col] = True
    columns = sim
    cgns = z.new_zeros(())
    if kmeans.ready:
        nearest, second = kmeans.nearest_two(z.detach())
        fn_mask = false_negative_mask(nearest, b)
        excluded = excluded | fn_mask
        hard = F.normalize(kmeans.centroids[second], dim=1)
        hard_logit = hard_weight * (z * hard).sum(1, keepdim=True) / temperature
        columns = torch.cat([sim, hard_logit], dim=1)
        excluded = torch.cat([excluded, torch.zeros(n, 1, dtype=torch.bool, device=z.device)], dim=1)
        pairs = fn_mask[: 2 * b]
        if bool(pairs.any()):
            delta = cos[: 2 * b] - cos[idx[: 2 * b], positive_col][:, None]
            cgns = margin_loss(delta[pairs], alpha, beta).mean()
    lse = torch.logsumexp(columns.masked_fill(excluded, float("-inf")), dim=1)
    positives = sim[idx[: 2 * b], positive_col]
    return {"dacl": lse.mean() - positives.mean(), "cgns": cgns}
