"""endofuse checkpoints: round trip, fp16 storage, config rebuild, bad files."""
import pytest
import torch

import endofuse.model.checkpoint as checkpoint_module
from endofuse.errors import EndofuseError
from endofuse.model import build_model, demo_checkpoint_path, load_checkpoint, read_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_model("tiny", depth=2, shallow_taps=(1, 2)).eval()
    # non-default BatchNorm stats so a lost buffer would show in the logits
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


def _logits(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, model.img_size, model.img_size, generator=g)
    with torch.no_grad():
        return model(x, x.flip(-1))


def test_round_trip_rebuilds_config_and_logits(tiny, tmp_path):
    path = save_checkpoint(tmp_path / "sub" / "tiny.pt", tiny, extra={"epoch": 3, "dice": 0.5})
    loaded = load_checkpoint(path)
    assert loaded.name == "tiny" and len(loaded.encoder_wli.blocks) == 2
    assert loaded.config == tiny.config and not loaded.training
    torch.testing.assert_close(_logits(loaded), _logits(tiny), atol=0, rtol=0)
    raw = read_checkpoint(path)
    assert raw["extra"] == {"epoch": 3, "dice": 0.5}
    assert raw["model_kwargs"] == {"num_classes": 2, "img_size": 160, "overrides": {"depth": 2, "shallow_taps": [1, 2]}}
    assert raw["format"] == "endofuse-checkpoint" and raw["model_name"] == "tiny"
    assert [p.name for p in path.parent.iterdir()] == ["tiny.pt"]  # no temp file left behind


def test_raw_file_loads_with_plain_weights_only_torch_load(tiny, tmp_path):
    path = save_checkpoint(tmp_path / "t.pt", tiny)
    raw = torch.load(path, weights_only=True)
    assert set(raw["state_dict"]) == set(tiny.state_dict())


def test_half_storage_is_fp16_on_disk_and_float32_when_loaded(tiny, tmp_path):
    full = save_checkpoint(tmp_path / "full.pt", tiny)
    half = save_checkpoint(tmp_path / "half.pt", tiny, half=True)
    stored = read_checkpoint(half)["state_dict"]
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    assert stored["decoder.conv_more.1.num_batches_tracked"].dtype == torch.int64
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    torch.testing.assert_close(_logits(loaded), _logits(tiny), atol=2e-2, rtol=2e-2)


def test_checkpoint_of_another_config_is_a_value_error(tiny, tmp_path):
    path = save_checkpoint(tmp_path / "tiny.pt", tiny)
    with pytest.raises(ValueError, match="holds model 'tiny', expected 'small'"):
        load_checkpoint(path, expected_name="small")
    # weights edited to not fit the stored config: strict load must name the file
    raw = read_checkpoint(path)
    raw["model_kwargs"]["overrides"]["depth"] = 3
    torch.save(raw, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match="edited.pt: weights do not match model 'tiny'"):
        load_checkpoint(tmp_path / "edited.pt")


def test_truncated_and_foreign_files_are_value_errors(tiny, tmp_path):
    path = save_checkpoint(tmp_path / "tiny.pt", tiny)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"transformer.embeddings.position_embeddings": torch.zeros(1)}, tmp_path / "ref.pth")
    with pytest.raises(ValueError, match="ref.pth: not an endofuse checkpoint.*convert-reference"):
        load_checkpoint(tmp_path / "ref.pth")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="text.pt"):
        read_checkpoint(tmp_path / "text.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_demo_checkpoint_path_names_the_missing_file(monkeypatch, tmp_path):
    monkeypatch.setattr(checkpoint_module, "DEMO_WEIGHTS", tmp_path / "weights" / "tiny_synthetic_demo.pt")
    with pytest.raises(EndofuseError, match="tiny_synthetic_demo.pt"):
        demo_checkpoint_path()
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "tiny_synthetic_demo.pt").write_bytes(b"x")
    assert demo_checkpoint_path().name == "tiny_synthetic_demo.pt"


def test_checkpoint_outlives_a_change_of_the_registry_defaults(tiny, tmp_path, monkeypatch):
    import dataclasses

    from endofuse.model import mm_endocl

    path = save_checkpoint(tmp_path / "tiny.pt", tiny)
    retuned = dataclasses.replace(mm_endocl.MODEL_CONFIGS["tiny"], decoder_channels=(32, 16, 8, 8), mlp_dim=64)
    monkeypatch.setitem(mm_endocl.MODEL_CONFIGS, "tiny", retuned)
    assert build_model("tiny").config.mlp_dim == 64  # today's default really changed
    loaded = load_checkpoint(path)
    assert loaded.config == tiny.config
    torch.testing.assert_close(_logits(loaded), _logits(tiny), atol=0, rtol=0)
