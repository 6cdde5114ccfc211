"""`endofuse train`: exact resume after SIGINT/SIGTERM mid-epoch, --resume refusals, run-folder checks."""
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from endofuse import cli
from endofuse.model import read_checkpoint

from conftest import TINY_TRAIN, read_log, synth_dataset

SIGNAL_AFTER_STEP_TWO = """
import os, sys, torch
from endofuse import cli
from endofuse.train.methods import MethodTerms

torch.set_num_threads(1)
sig, stock, steps = int(sys.argv[1]), MethodTerms.observe, []

def signal_after_step_two(self, aux):  # a real signal, delivered mid-epoch (4 steps per epoch)
    stock(self, aux)
    steps.append(1)
    if len(steps) == 2:
        os.kill(os.getpid(), sig)

MethodTerms.observe = signal_after_step_two
sys.exit(cli.main(sys.argv[2:]))
"""
TINY = [*TINY_TRAIN, "--batch-size", "2", "--recipe", "paper"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synth_dataset(tmp_path_factory.mktemp("faults_train"), seed=3, size="40x48")


def train(data, run, *extra):
    return cli.main(["train", "--data", str(data), "--out", str(run), *TINY, *extra])


def log_rows(run):
    return [{k: v for k, v in row.items() if k not in ("seconds", "pairs_per_s")} for row in read_log(run)]


def one_line(capsys, rc):
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_resume_after_a_signal_mid_epoch_reproduces_the_uninterrupted_run_exactly(sig, data, tmp_path):
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert train(data, reference, "--epochs", "2") == 0

    # The interrupted run is a child process, so the signal meets only endofuse's handlers, never state that
    # earlier tests' libraries left in this process; one thread there too, as here, so the weights can match.
    proc = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_STEP_TWO, str(int(sig)), "train", "--data", str(data),
                           "--out", str(run), *TINY, "--epochs", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 128 + sig, proc.stderr
    extra = read_checkpoint(run / "last.pt")["extra"]
    assert (extra["epoch"], extra["batch_in_epoch"]) == (0, 3)  # the step in flight completed, then saved
    assert train(data, run, "--epochs", "2", "--resume") == 0

    ref, got = read_checkpoint(reference / "last.pt")["state_dict"], read_checkpoint(run / "last.pt")["state_dict"]
    assert ref.keys() == got.keys()
    differing = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert differing == []
    assert log_rows(run) == log_rows(reference)  # epoch 1's loss covers all its batches, not only the resumed ones


@pytest.fixture(scope="module")
def finished_run(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert train(data, run, "--epochs", "1") == 0
    return run


@pytest.mark.parametrize("change, flag", [
    (["--img-size", "48"], "--img-size"),
    (["--recipe", "default"], "--recipe"),
    (["--batch-size", "4"], "--batch-size"),
])
def test_resume_with_different_options_is_refused_naming_the_difference(change, flag, data, finished_run, capsys):
    before = (finished_run / "config.json").read_bytes()
    args = ["train", "--data", str(data), "--out", str(finished_run), "--epochs", "2", "--resume", *TINY]
    for i, token in enumerate(args):  # replace the option's value (or add it)
        if token == change[0]:
            args[i + 1] = change[1]
            break
    else:
        args += change
    err = one_line(capsys, cli.main(args))
    assert flag in err and "start a new --out" in err
    assert (finished_run / "config.json").read_bytes() == before  # provenance untouched


def test_resume_with_other_data_is_refused(data, finished_run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(data, other)
    err = one_line(capsys, train(other, finished_run, "--epochs", "2", "--resume"))
    assert "--data" in err


def test_resume_from_weights_without_training_state_is_one_line(data, finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(finished_run / "best.pt", run / "last.pt")
    err = one_line(capsys, train(data, run, "--epochs", "2", "--resume"))
    assert "no training state" in err and "optimizer" in err


@pytest.mark.parametrize("case", ["out-is-file", "out-is-data", "out-contains-data", "foreign-folder",
                                  "img-size-0", "device-cuda"])
def test_run_folder_and_option_mistakes_are_one_line(case, data, tmp_path, capsys):
    import torch

    if case == "device-cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    out, extra, message = {
        "out-is-file": (a_file, [], "existing file"),
        "out-is-data": (data, [], "same as the input --data"),
        "out-contains-data": (data.parent, [], "contains the input --data"),
        "foreign-folder": (foreign, [], "--force"),
        "img-size-0": (tmp_path / "r", ["--img-size", "0"], "--img-size"),
        "device-cuda": (tmp_path / "r", ["--device", "cuda"], "use --device cpu"),
    }[case]
    assert message in one_line(capsys, train(data, out, "--epochs", "1", *extra))
    assert a_file.read_text() == "keep" and (foreign / "notes.txt").read_text() == "keep"
    assert not (data / "last.pt").exists()


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_leaves_no_temp(data, tmp_path, capsys, monkeypatch):
    import errno

    def full_disk(payload, handle, *args, **kwargs):
        handle.write(b"partial")  # what a real full disk leaves: a few bytes, then ENOSPC
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    run = tmp_path / "run"
    err = one_line(capsys, train(data, run, "--epochs", "1")).split("\r")[-1]
    assert "last.pt" in err and "no space left on device" in err
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp")) and not (run / "last.pt").exists()
