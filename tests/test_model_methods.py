"""Related-work options inside the model: dmaf, cluster negatives, mir, distillation (gradients, export)."""
import onnx
import onnxruntime as ort
import pytest
import torch

from endofuse.model import build_model, losses
from endofuse.model.cluster_negatives import cluster_dacl
from endofuse.model.distill import prototype_distill, relation_distill

SMALL = dict(img_size=32, dropout=0.0)  # a 2x2 token grid keeps each test a fraction of a second


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pair(model, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = model.img_size
    return torch.rand(batch, 3, size, size, generator=g), torch.rand(batch, 3, size, size, generator=g)


def grad_sum(module) -> float:
    return float(sum(p.grad.abs().sum() for p in module.parameters() if p.grad is not None))


def test_dmaf_model_ignores_nbi_when_missing_and_has_no_token():
    torch.manual_seed(0)
    model = build_model("tiny", fusion="dmaf", **SMALL).eval()
    assert model.missing_nbi_token is None and model.dmaf is not None
    assert not hasattr(model.fusion, "share_fusion")  # the summed fusion MLPs are not built
    wli, nbi = pair(model)
    forced = torch.tensor([True, False, True])
    model._nbi_dropped = lambda batch, nbi, device: forced  # a fixed modality-dropout pattern
    with torch.no_grad():
        alone, fused = model(wli, None), model(wli, nbi)
        mixed, aux = model.forward_train(wli, nbi, temperature=0.1)
        mixed_other, _ = model.forward_train(wli, torch.where(forced[:, None, None, None], torch.rand_like(nbi), nbi),
                                             temperature=0.1)
    # dropped samples take the missing-NBI path whatever their NBI frames hold; kept ones the fused path
    torch.testing.assert_close(mixed[forced], alone[forced], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mixed[~forced], fused[~forced], atol=1e-5, rtol=1e-4)
    assert torch.equal(mixed[forced], mixed_other[forced])
    assert not torch.allclose(alone, fused)
    assert float(aux["dacl"]) > 0.0  # the kept sample still has the aux terms


def test_dmaf_modality_term_segments_each_modality_alone_on_kept_samples():
    torch.manual_seed(5)
    model = build_model("tiny", fusion="dmaf", **SMALL).train()
    wli, nbi = pair(model)
    target = torch.zeros(3, 32, 32, dtype=torch.long)
    target[:, :16, :16] = 1  # the top-left token of the 2x2 grid is lesion
    kept = torch.tensor([True, False, True])
    model._nbi_dropped = lambda batch, nbi, device: ~kept
    _, aux = model.forward_train(wli, nbi, target=target, temperature=0.1)
    # restated: the head on mix_w(t_w) and on mix_n(t_n) of the kept samples, CE against the token classes
    parts = model.fusion.split(model.encoder_wli(wli).tokens, model.encoder_nbi(nbi).tokens)
    soft = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    expected = 0.0
    for mix, proj, index, spec, share in ((model.dmaf.mix_wli, model.dmaf.proj_wli, 0, "spec_w", "share_w"),
                                          (model.dmaf.mix_nbi, model.dmaf.proj_nbi, 1, "spec_n", "share_n")):
        tokens = proj(torch.cat([parts[spec][kept], parts[share][kept]], -1)) + model.dmaf.modality_embed[index]
        log_p = torch.log_softmax(model.modality_head(mix(tokens)), -1)
        expected = expected - (soft * log_p).sum(-1).mean()
    torch.testing.assert_close(aux["modality"], expected, atol=1e-5, rtol=1e-4)
    aux["modality"].backward()
    assert grad_sum(model.encoder_nbi) > 0 and grad_sum(model.dmaf.mix_nbi) > 0  # the NBI path learns by itself
    assert grad_sum(model.decoder) == 0.0
    # token fusion has no such term; a batch without NBI gives 0
    token = build_model("tiny", **SMALL).train()
    assert "modality" not in token.forward_train(wli, nbi, target=target, temperature=0.1)[1]
    del model._nbi_dropped
    _, none = model.forward_train(wli, None, target=target, temperature=0.1)
    assert float(none["modality"]) == 0.0


def test_paper_keeps_the_reference_fusion():
    with pytest.raises(ValueError, match="reference fusion"):
        build_model("paper", fusion="dmaf")


def test_cluster_negatives_update_centroids_and_match_cluster_dacl():
    torch.manual_seed(1)
    model = build_model("tiny", negatives="cluster", clusters=4, modality_dropout=0.0, **SMALL).train()
    wli, nbi = pair(model, batch=2)
    _, aux = model.forward_train(wli, nbi, temperature=0.1)  # first step fills the 4 centroids from 8 rows
    assert model.cluster.ready and float(aux["cgns"]) == 0.0
    before = model.cluster.centroids.clone()
    with torch.no_grad():
        parts = model.fusion.split(model.encoder_wli(wli).tokens, model.encoder_nbi(nbi).tokens)
        expected = cluster_dacl(parts["share_w"], parts["share_n"], parts["spec_w"], parts["spec_n"], model.cluster)
    _, aux = model.forward_train(wli, nbi, temperature=0.1)
    torch.testing.assert_close(aux["dacl"].detach(), expected["dacl"], atol=1e-5, rtol=1e-4)
    assert not torch.equal(model.cluster.centroids, before)  # training moves them
    model.eval()
    after = model.cluster.centroids.clone()
    model.forward_train(wli, nbi, temperature=0.1)
    assert torch.equal(model.cluster.centroids, after)  # evaluation does not
    assert {"cluster.centroids", "cluster.filled"} <= set(model.state_dict())


def test_mir_gradient_reaches_wli_side_and_head_only():
    torch.manual_seed(2)
    model = build_model("tiny", mir=True, modality_dropout=0.0, **SMALL).train()
    wli, nbi = pair(model)
    _, aux = model.forward_train(wli, nbi, temperature=0.1)
    aux["mir"].backward()
    assert grad_sum(model.mir_head) > 0 and grad_sum(model.encoder_wli) > 0 and grad_sum(model.fusion.share_wli) > 0
    for name in ("encoder_nbi", "decoder", "pool_wli"):
        assert grad_sum(getattr(model, name)) == 0.0, name
    assert grad_sum(model.fusion.specific_wli) == 0.0 and grad_sum(model.fusion.share_nbi) == 0.0


@pytest.mark.parametrize("fusion", ["token", "dmaf"])
def test_distillation_teaches_the_missing_path_only(fusion):
    torch.manual_seed(3)
    model = build_model("tiny", fusion=fusion, modality_dropout=0.0, **SMALL).train()
    wli, nbi = pair(model)
    target = torch.zeros(3, 32, 32, dtype=torch.long)
    target[:, 8:24, 4:20] = 1
    _, aux = model.forward_train(wli, nbi, target=target, distill=("relation", "prototype"), temperature=0.1)
    assert aux["relation"].item() > 0 and aux["prototype"].item() > 0
    (aux["relation"] + aux["prototype"]).backward()
    assert grad_sum(model.encoder_nbi) == 0.0 and grad_sum(model.decoder) == 0.0  # the teacher is detached
    if fusion == "token":
        assert grad_sum(model.encoder_wli) > 0
        assert float(model.missing_nbi_token.grad.abs().sum()) > 0
    else:  # dmaf: the student learns in the fusion; the WLI encoder is left to the other terms
        assert grad_sum(model.encoder_wli) == 0.0
        assert grad_sum(model.dmaf) > 0 and grad_sum(model.dmaf.proj_nbi) == 0.0
        assert float(model.dmaf.missing_nbi.grad.abs().sum()) > 0 and grad_sum(model.fusion.share_wli) > 0


def test_dmaf_distillation_matches_the_missing_path_on_fixed_wli_tokens():
    """Plain reference: student = DMAF without NBI on the WLI encoder's tokens held fixed, teacher detached."""
    torch.manual_seed(5)
    model = build_model("tiny", fusion="dmaf", modality_dropout=0.0, **SMALL).train()
    wli, nbi = pair(model, seed=2)
    target = torch.zeros(3, 32, 32, dtype=torch.long)
    target[:, 4:20, 8:28] = 1
    _, aux = model.forward_train(wli, nbi, target=target, distill=("relation", "prototype"), temperature=0.1)
    learned = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(aux["relation"] + aux["prototype"], learned, allow_unused=True)

    tokens_wli = model.encoder_wli(wli).tokens.detach()
    teacher = model.dmaf(model.fusion.split(tokens_wli, model.encoder_nbi(nbi).tokens))[0].detach()
    student = model.dmaf(model.fusion.split_wli(tokens_wli))[0]
    relation, prototype = relation_distill(student, teacher), prototype_distill(student, teacher, target, 2)
    assert float(aux["relation"].detach()) == pytest.approx(float(relation.detach()), rel=1e-5)
    assert float(aux["prototype"].detach()) == pytest.approx(float(prototype.detach()), rel=1e-5, abs=1e-7)
    want = torch.autograd.grad(relation + prototype, learned, allow_unused=True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, g, w in zip(names, got, want, strict=True):
        if w is None:  # the encoders, the decoder and the heads: no gradient from the distillation
            assert g is None or float(g.abs().max()) == 0.0, name
        else:
            torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_distillation_needs_a_missing_path():
    model = build_model("tiny", missing_nbi_token=False, modality_dropout=0.0, **SMALL).train()
    wli, nbi = pair(model)
    with pytest.raises(ValueError, match="missing-NBI path"):
        model.forward_train(wli, nbi, distill=("relation",), temperature=0.1)


def test_options_off_keep_the_reference_terms():
    torch.manual_seed(4)
    model = build_model("tiny", modality_dropout=0.0, **SMALL).train()
    wli, nbi = pair(model)
    _, aux = model.forward_train(wli, nbi, temperature=0.1)
    assert "cgns" not in aux and "mir" not in aux and "relation" not in aux
    with torch.no_grad():
        parts = model.fusion.split(model.encoder_wli(wli).tokens, model.encoder_nbi(nbi).tokens)
        ref = losses.dacl(parts["share_w"], parts["share_n"], parts["spec_w"], parts["spec_n"], 0.1)
    torch.testing.assert_close(aux["dacl"].detach(), ref, atol=1e-5, rtol=1e-4)


@pytest.mark.slow  # torch.export of two graphs: tens of seconds on 2 cores
def test_dmaf_onnx_export_matches_eager_and_leaves_training_heads_out(tmp_path):
    from endofuse.realtime.engines.onnx_export import export_onnx

    torch.manual_seed(5)
    model = build_model("tiny", fusion="dmaf", mir=True, negatives="cluster", clusters=4, **SMALL).eval()
    result = export_onnx(model, tmp_path / "dmaf.onnx", model_label="dmaf test", log=lambda *a: None)
    wli, nbi = pair(model, batch=1, seed=9)
    for path, feeds, eager in ((result.path, {"wli": wli, "nbi": nbi}, model(wli, nbi)),
                               (result.missing_nbi_path, {"wli": wli}, model(wli, None))):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
        assert abs(out - eager.detach().numpy()).max() < 1e-4
        names = {init.name for init in onnx.load(str(path)).graph.initializer}
        assert not any("mir_head" in n or "cluster" in n for n in names)
    assert any("dmaf" in n for n in {i.name for i in onnx.load(str(result.path)).graph.initializer})
