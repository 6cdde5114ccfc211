"""`endofuse train`: recipes, run files, resume after a real kill, signals, NaN stop, torchrun."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from endofuse import cli
from endofuse.errors import EndofuseError
from endofuse.model import load_checkpoint, read_checkpoint

from conftest import read_log, spawn_endofuse, synth_dataset, train_cmd, wait_for_epoch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synth_dataset(tmp_path_factory.mktemp("train_data"), seed=1)


def same_weights(a: Path, b: Path) -> float:
    sa, sb = read_checkpoint(a)["state_dict"], read_checkpoint(b)["state_dict"]
    assert sa.keys() == sb.keys()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


def test_paper_recipe_run_files_and_poly_schedule(data, tmp_path):
    run = tmp_path / "run"
    assert cli.main(train_cmd(data, run, "--epochs", "2", "--recipe", "paper", "--batch-size", "4")) == 0
    assert {p.name for p in run.iterdir()} == {"last.pt", "best.pt", "log.csv", "curves.png", "config.json",
                                              ".endofuse-outputs.json"}  # the list of files endofuse wrote
    rows = read_log(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for column in ("loss", "seg", "da", "align", "diff", "orth_wli", "orth_nbi", "mi", "dacl", "fd", "lr", "val_dice"):
        assert rows[0][column] != "", column
    # 8 pairs / batch 4 = 2 steps per epoch, 4 in all; poly(0.9) per iteration from 0.01.
    total = 4
    for r in rows:
        step = int(r["step"])
        assert float(r["lr"]) == pytest.approx(0.01 * (1 - step / total) ** 0.9, abs=1e-7)
    # The progressive fd weight: min(0.05, 0.1 * epoch / epochs) with 0-based epochs.
    assert [float(r["w_fd"]) for r in rows] == pytest.approx([0.0, 0.05])
    config = json.loads((run / "config.json").read_text())
    assert config["validation"] == "Test.csv (2 pairs)"
    assert config["recipe"]["optimizer"] == "sgd" and config["seed"] == 1234
    assert "torch" in config["versions"] and config["model"]["img_size"] == 32
    best = read_checkpoint(run / "best.pt")
    assert best["extra"]["val"]["val_dice"] == pytest.approx(max(float(r["val_dice"]) for r in rows), abs=1e-5)
    assert load_checkpoint(run / "best.pt").img_size == 32


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(train_cmd(data, run, "--epochs", "1", "--resume")) == 1
    assert "no " in capsys.readouterr().err
    assert cli.main(train_cmd(data, run, "--epochs", "1")) == 0
    assert cli.main(train_cmd(data, run, "--epochs", "1")) == 1
    assert "--resume" in capsys.readouterr().err


def test_nonfinite_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch):
    import endofuse.train.trainer as trainer

    run = tmp_path / "run"
    assert cli.main(train_cmd(data, run, "--epochs", "1", "--batch-size", "4")) == 0
    before = (run / "last.pt").read_bytes()
    calls = {"n": 0}
    real = trainer.segmentation_loss

    def poisoned(logits, target):
        calls["n"] += 1
        value = real(logits, target)
        return value * float("nan") if calls["n"] == 2 else value

    monkeypatch.setattr(trainer, "segmentation_loss", poisoned)
    options = trainer.TrainOptions(data=data, out=run, epochs=3, img_size=32, batch_size=4, resume=True,
                                   progress=False)
    with pytest.raises(EndofuseError, match=r"non-finite loss \(nan\) at epoch 2, step 4 \(batch 2 of the epoch\)"):
        trainer.train(options)
    assert (run / "last.pt").read_bytes() == before


def test_ablations_switch_terms_off(data, tmp_path):
    run = tmp_path / "run"
    assert cli.main(train_cmd(data, run, "--epochs", "1", "--ablate", "nbi")) == 0
    row = read_log(run)[0]
    # Without NBI there is no second modality to align or contrast: every aux term is 0.
    assert float(row["da"]) == 0.0 and float(row["fd"]) == 0.0
    assert float(row["loss"]) == pytest.approx(float(row["seg"]), rel=1e-5)
    assert json.loads((run / "config.json").read_text())["ablate"] == ["nbi"]
    assert cli.main(train_cmd(data, tmp_path / "bad", "--epochs", "1", "--ablate", "da,colour")) == 1


def test_total_loss_matches_the_formula():
    from endofuse.train.recipes import total_loss

    aux = {"mi": torch.tensor(0.4), "dacl": torch.tensor(10.0), "da": torch.tensor(3.0)}  # fd = 0.4 + 0.01 * 10
    seg = torch.tensor(1.0)
    at = {"epoch": 50, "epochs": 100}  # w_fd = min(0.05, 0.1 * 50 / 100) = 0.05
    assert float(total_loss(seg, aux, ablate=(), **at)) == pytest.approx(1.0 + 0.05 * 0.5 + 1e-4 * 3.0)
    assert float(total_loss(seg, aux, ablate=("dacl",), **at)) == pytest.approx(1.0 + 0.05 * 0.4 + 1e-4 * 3.0)
    assert float(total_loss(seg, aux, ablate=("da", "fd"), **at)) == pytest.approx(1.0)


@pytest.mark.slow  # real training subprocesses
def test_resume_after_sigkill_continues_with_the_right_epoch_and_same_result(data, tmp_path):
    args = ["--epochs", "3", "--recipe", "paper", "--batch-size", "4"]
    reference = tmp_path / "reference"
    ref = spawn_endofuse(train_cmd(data, reference, *args))
    killed = tmp_path / "killed"
    proc = spawn_endofuse(train_cmd(data, killed, *args))
    wait_for_epoch(killed, proc, 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = read_checkpoint(killed / "last.pt")["extra"]["epoch"]
    assert 1 <= done < 3
    resumed = spawn_endofuse(train_cmd(data, killed, *args, "--resume"))
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"resuming at epoch {done + 1}, batch 0" in out
    assert [int(r["epoch"]) for r in read_log(killed)] == [1, 2, 3]
    ref_out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, ref_out
    # Optimiser, poly schedule, epoch and RNG restored: the same weights as the uninterrupted run.
    assert same_weights(reference / "last.pt", killed / "last.pt") < 1e-5
    ref_rows, rows = read_log(reference), read_log(killed)
    assert [r["lr"] for r in rows] == [r["lr"] for r in ref_rows]


@pytest.mark.parametrize("requested, name, code", [("SIGINT", "SIGINT", 130), ("SIGTERM", "SIGTERM", 143),
                                                    (None, "SIGINT", 130)])  # None: another torchrun rank's signal
def test_stop_flag_names_the_signal_and_the_shells_exit_code(requested, name, code):
    from endofuse.train.state import StopFlag

    stop = StopFlag()
    stop.requested = requested
    assert (stop.signal_name, stop.exit_code) == (name, code)


@pytest.mark.slow  # real training subprocesses
def test_sigterm_saves_a_resumable_checkpoint_mid_epoch(data, tmp_path):
    run = tmp_path / "run"
    args = ["--epochs", "40", "--batch-size", "2"]
    proc = spawn_endofuse(train_cmd(data, run, *args))
    wait_for_epoch(run, proc, 1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out
    assert "interrupted (SIGTERM): saved resumable" in out
    extra = read_checkpoint(run / "last.pt")["extra"]
    epochs_logged = len(read_log(run))
    # Saved after the step it stopped in: in the epoch after the last logged one (up to its very end).
    assert extra["epoch"] == epochs_logged and 0 < extra["batch_in_epoch"] <= 4
    assert extra["scheduler"]["last_epoch"] == epochs_logged * 4 + extra["batch_in_epoch"]


@pytest.mark.slow  # real training subprocesses
def test_torchrun_two_processes_on_cpu(data, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "endofuse", *train_cmd(data, run, "--epochs", "2", "--batch-size", "2")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("epoch 2/2:") == 1  # only rank 0 prints
    assert {p.name for p in run.iterdir()} == {"last.pt", "best.pt", "log.csv", "curves.png", "config.json",
                                              ".endofuse-outputs.json"}  # the list of files endofuse wrote
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2
    # 8 pairs over 2 ranks, batch 2 per rank: 2 steps per epoch.
    assert config["steps_per_epoch"] == 2
    assert [int(r["step"]) for r in read_log(run)] == [2, 4]
    extra = read_checkpoint(run / "last.pt")["extra"]
    assert extra["world_size"] == 2 and len(extra["rng"]) == 2


def test_trains_on_the_real_sample(sample_data_dir, tmp_path):
    run = tmp_path / "run"
    assert cli.main(train_cmd(sample_data_dir, run, "--epochs", "1", "--batch-size", "5")) == 0
    row = read_log(run)[0]
    assert 0.0 <= float(row["val_dice"]) <= 1.0
    assert json.loads((run / "config.json").read_text())["validation"] == "Test.csv (5 pairs)"


def test_pretrained_npz_initialises_both_encoders(data, tmp_path, capsys):
    # The model area's test writes a small npz in the Google ViT / TransUNet layout; reuse its writer.
    npz_writer = pytest.importorskip("test_model_pretrained", reason="model area's npz writer not available")
    from endofuse.model import build_model, load_imagenet21k_npz
    from endofuse.train.trainer import TrainOptions, train

    npz = tmp_path / "R50+ViT-B_16.npz"
    npz_writer.write_npz(npz, grid=10)
    cfg = dict(npz_writer.CFG)
    run = tmp_path / "run"
    # lr 0: the encoders (GroupNorm/LayerNorm only, no running stats) keep exactly what was loaded.
    options = TrainOptions(data=data, out=run, epochs=1, img_size=32, lr=0.0, recipe="paper", batch_size=4,
                           pretrained=npz, overrides=cfg, progress=False)
    assert train(options) == 0
    expected = build_model("tiny", img_size=32, **cfg)
    load_imagenet21k_npz(expected, npz)
    state = read_checkpoint(run / "last.pt")["state_dict"]
    for prefix in ("encoder_wli.", "encoder_nbi."):
        for key, value in expected.state_dict().items():
            if key.startswith(prefix):
                torch.testing.assert_close(state[key], value, msg=key)
    # And the CLI reports a file that does not fit the model, naming it.
    capsys.readouterr()
    assert cli.main(train_cmd(data, tmp_path / "bad", "--epochs", "1", "--pretrained", str(npz))) == 1
    assert str(npz) in capsys.readouterr().err
