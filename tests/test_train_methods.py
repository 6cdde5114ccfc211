"""`endofuse train` with the related-work options: run files, one-line refusals, exact resume after SIGKILL."""
import json
import signal
from pathlib import Path

import pytest
import torch

from endofuse import cli
from endofuse.model import load_checkpoint, read_checkpoint

from conftest import read_log, spawn_endofuse, synth_dataset, train_cmd, wait_for_epoch

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ALL = ["--fusion", "dmaf", "--negatives", "cluster", "--clusters", "4", "--mir", "--distill", "relation,prototype",
       "--dtm"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synth_dataset(tmp_path_factory.mktemp("methods_data"), seed=2)


def test_every_option_trains_logs_its_terms_and_exports_nothing_extra(data, tmp_path):
    run = tmp_path / "run"
    assert cli.main(train_cmd(data, run, "--epochs", "2", "--batch-size", "4", *ALL)) == 0
    rows = read_log(run)
    for column in ("cgns", "mir", "relation", "prototype", "dtm_relation", "dtm_prototype"):
        assert all(r[column] != "" for r in rows), column
    assert float(rows[-1]["mir"]) > 0 and float(rows[-1]["relation"]) > 0
    config = json.loads((run / "config.json").read_text())
    methods = config["options"]["methods"]
    assert methods["fusion"] == "dmaf" and methods["negatives"] == "cluster" and methods["clusters"] == 4
    assert methods["distill"] == ["prototype", "relation"] and methods["dtm"] and methods["mir"]
    assert any(t["name"] == "mir" and t["weight"] == 10.0 for t in config["loss_weights"]["terms"])
    payload = read_checkpoint(run / "last.pt")
    assert int(payload["state_dict"]["cluster.filled"]) == 4 and payload["extra"]["dtm"]["initial"]
    model = load_checkpoint(run / "best.pt")
    assert model.config.fusion == "dmaf" and model.missing_nbi_token is None
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32), None).shape == (1, 2, 32, 32)


def test_options_off_log_blank_columns(data, tmp_path):
    run = tmp_path / "run"
    assert cli.main(train_cmd(data, run, "--epochs", "1", "--batch-size", "4")) == 0
    row = read_log(run)[0]
    assert row["mir"] == "" and row["cgns"] == "" and row["dtm_relation"] == ""
    assert "cluster.centroids" not in read_checkpoint(run / "last.pt")["state_dict"]


@pytest.mark.parametrize("extra, match", [
    (["--dtm"], "--dtm reweights the distillation terms"),
    (["--distill", "relation,colour"], "--distill: unknown"),
    (["--fusion", "dmaf", "--model", "paper"], "paper keeps the reference fusion"),
    (["--negatives", "cluster", "--clusters", "1"], "--clusters must be >= 2"),
])
def test_bad_combinations_are_one_line_errors(data, tmp_path, capsys, extra, match):
    assert cli.main(train_cmd(data, tmp_path / "bad", "--epochs", "1", *extra)) == 1
    err = capsys.readouterr().err.strip()
    assert match in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad" / "last.pt").exists()


@pytest.mark.slow
def test_resume_after_sigkill_with_cluster_negatives_reproduces_the_uninterrupted_run(data, tmp_path):
    args = ["--epochs", "3", "--recipe", "paper", "--batch-size", "4", *ALL]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    ref = spawn_endofuse(train_cmd(data, reference, *args))
    proc = spawn_endofuse(train_cmd(data, killed, *args))
    wait_for_epoch(killed, proc, 1, timeout=240)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = read_checkpoint(killed / "last.pt")["extra"]["epoch"]
    assert 1 <= done < 3
    resumed = spawn_endofuse(train_cmd(data, killed, *args, "--resume"))
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert f"resuming at epoch {done + 1}, batch 0" in out
    ref_out, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, ref_out
    a, b = read_checkpoint(reference / "last.pt"), read_checkpoint(killed / "last.pt")
    # centroids, their fill count, every weight and the DTM state continue exactly
    assert torch.equal(a["state_dict"]["cluster.filled"], b["state_dict"]["cluster.filled"])
    for key in a["state_dict"]:
        diff = (a["state_dict"][key].float() - b["state_dict"][key].float()).abs().max()
        assert float(diff) < 1e-5, key
    for field in ("initial", "ema"):
        assert b["extra"]["dtm"][field] == pytest.approx(a["extra"]["dtm"][field], rel=1e-5), field
    ref_rows, rows = read_log(reference), read_log(killed)
    for column in ("lr", "cgns", "mir", "relation", "prototype", "dtm_relation", "dtm_prototype"):
        assert [float(r[column]) for r in rows] == pytest.approx([float(r[column]) for r in ref_rows], rel=1e-4), column
