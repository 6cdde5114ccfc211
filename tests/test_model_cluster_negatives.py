"""CM-CGNS pieces: online k-means, second-nearest centroid, false-negative mask, cluster DACL vs brute force."""
import math

import pytest
import torch
import torch.nn.functional as F

from endofuse.model.cluster_negatives import (
    OnlineKMeans,
    cluster_dacl,
    false_negative_mask,
    margin_loss,
)
from endofuse.model.losses import dacl


def ready_kmeans(centroids: torch.Tensor, momentum: float = 0.5) -> OnlineKMeans:
    km = OnlineKMeans(centroids.shape[0], centroids.shape[1], momentum)
    km.centroids.copy_(centroids)
    km.filled.fill_(centroids.shape[0])
    return km


def test_assignment_and_second_nearest_on_a_hand_case():
    # centroids on the axes of the plane; cosine picks by angle, not length
    km = ready_kmeans(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    z = torch.tensor([[10.0, 1.0], [0.2, 3.0], [-1.0, -0.5], [-1.0, 0.9]])
    nearest, second = km.nearest_two(z)
    # by angle: 5.7 deg -> c0, c1; 86 deg -> c1, c0; 207 deg -> c2, then c1 (cos -0.45) over c0 (-0.89);
    # 138 deg -> c2 (cos 0.74), then c1 (0.67)
    assert nearest.tolist() == [0, 1, 2, 2]
    assert second.tolist() == [1, 0, 1, 1]


def test_momentum_update_by_hand():
    km = ready_kmeans(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), momentum=0.5)
    z = torch.tensor([[2.0, 0.0], [0.0, 5.0], [0.8, 0.6]])  # rows 0 and 2 -> c0, row 1 -> c1, c2 unused
    km.update(z)
    mean0 = (torch.tensor([1.0, 0.0]) + torch.tensor([0.8, 0.6])) / 2  # members are L2-normalised
    expected = torch.stack([0.5 * torch.tensor([1.0, 0.0]) + 0.5 * mean0, torch.tensor([0.0, 1.0]),
                            torch.tensor([-1.0, 0.0])])
    torch.testing.assert_close(km.centroids, expected)


def test_farthest_point_initialisation_over_two_batches():
    km = OnlineKMeans(3, 2)
    km.update(torch.tensor([[1.0, 0.0], [0.9, 0.1]]))  # 2 rows -> 2 of 3 centroids
    assert int(km.filled) == 2 and not km.ready
    km.update(torch.tensor([[0.95, 0.05], [-1.0, 0.0], [0.0, 1.0]]))
    assert km.ready
    # third centroid: of the new rows, the one least similar to the two already chosen: (-1, 0)
    torch.testing.assert_close(km.centroids[2], torch.tensor([-1.0, 0.0]))
    torch.testing.assert_close(km.centroids[1], F.normalize(torch.tensor([0.9, 0.1]), dim=0))


def test_false_negative_mask_vs_brute_force():
    b = 3
    clusters = torch.tensor([0, 1, 0, 0, 2, 1, 0, 1, 1, 2, 0, 0])
    mask = false_negative_mask(clusters, b)
    for i in range(4 * b):
        for j in range(4 * b):
            kind_i, kind_j = i < 2 * b, j < 2 * b
            positive = (i < b and j == i + b) or (b <= i < 2 * b and j == i - b)
            expected = i != j and not positive and kind_i == kind_j and clusters[i] == clusters[j]
            assert bool(mask[i, j]) == expected, (i, j)


def brute_force_cluster_dacl(parts, km, tau=0.1, w=3.0, alpha=0.2, beta=0.5):
    b = parts[0].shape[0]
    z = F.normalize(torch.cat([p.flatten(1) for p in parts]), dim=1)
    c = F.normalize(km.centroids, dim=1)
    n = 4 * b
    clusters = [int((c @ z[i]).argmax()) for i in range(n)]
    second = [int(torch.topk(c @ z[i], 2).indices[1]) for i in range(n)]
    pos = {i: (i + b if i < b else i - b) for i in range(2 * b)}
    rows, margins, positives = [], [], []
    for i in range(n):
        terms = []
        for j in range(n):
            if j == i or pos.get(i) == j:
                continue
            same_kind = (i < 2 * b) == (j < 2 * b)
            if same_kind and clusters[i] == clusters[j]:
                if i in pos:
                    delta = float(z[i] @ z[j] - z[i] @ z[pos[i]])
                    margins.append(max(0.0, delta + alpha) + max(0.0, -delta - beta))
                continue
            terms.append(float(z[i] @ z[j]) / tau)
        terms.append(w * float(z[i] @ c[second[i]]) / tau)
        top = max(terms)
        rows.append(top + math.log(sum(math.exp(t - top) for t in terms)))
        if i in pos:
            positives.append(float(z[i] @ z[pos[i]]) / tau)
    cgns = sum(margins) / len(margins) if margins else 0.0
    return sum(rows) / n - sum(positives) / len(positives), cgns, len(margins)


def test_cluster_dacl_matches_brute_force_and_batch_dacl_before_ready():
    torch.manual_seed(0)
    b, tokens, dim = 3, 4, 5
    base = torch.randn(1, tokens, dim)
    # shared features close to one another so some land in one cluster
    parts = [base + 0.3 * torch.randn(b, tokens, dim) for _ in range(2)]
    parts += [torch.randn(b, tokens, dim) for _ in range(2)]
    km = OnlineKMeans(4, tokens * dim)
    out = cluster_dacl(*parts, km)
    torch.testing.assert_close(out["dacl"], dacl(*parts, temperature=0.1))
    assert float(out["cgns"]) == 0.0
    km.update(torch.cat([p.flatten(1) for p in parts]))
    assert km.ready
    out = cluster_dacl(*parts, km)
    ref_dacl, ref_cgns, n_pairs = brute_force_cluster_dacl(parts, km)
    assert n_pairs > 0  # the case exercises the mask and the margin
    assert float(out["dacl"]) == pytest.approx(ref_dacl, rel=1e-5, abs=1e-5)
    assert float(out["cgns"]) == pytest.approx(ref_cgns, rel=1e-5, abs=1e-6)


def test_margin_loss_is_zero_inside_the_band():
    delta = torch.tensor([-0.6, -0.5, -0.3, -0.2, 0.1])
    assert margin_loss(delta).tolist() == pytest.approx([0.1, 0.0, 0.0, 0.0, 0.3])


def test_gradient_reaches_features_not_centroids():
    torch.manual_seed(1)
    parts = [torch.randn(2, 3, 4, requires_grad=True) for _ in range(4)]
    km = OnlineKMeans(3, 12)
    km.update(torch.cat([p.detach().flatten(1) for p in parts]))
    before = km.centroids.clone()
    out = cluster_dacl(*parts, km)
    (out["dacl"] + out["cgns"]).backward()
    assert all(float(p.grad.abs().sum()) > 0 for p in parts)
    assert not km.centroids.requires_grad and km.centroids.grad is None
    assert torch.equal(km.centroids, before)  # the loss never moves centroids; only update() does
    assert [name for name, _ in km.named_parameters()] == []
    assert {name for name, _ in km.named_buffers()} == {"centroids", "filled"}


def _gather_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from endofuse.model.cluster_negatives import _gather_rows

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    rows = torch.full((rank + 1, 2), float(rank))  # rank 0: one row, rank 1: two rows
    gathered = _gather_rows(rows)
    if rank == 1:
        torch.save(gathered, out)
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch and join a gloo group
def test_rows_of_unequal_counts_are_gathered_from_every_rank(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "gathered.pt"
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_gather_worker, args=(2, init, str(out)), nprocs=2, join=True)
    assert torch.load(out, weights_only=True).tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
