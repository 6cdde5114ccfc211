"""Ordinary endings of the `endofuse` program, from a real process: Ctrl-C at any moment (also while modules are
still importing) is one line and exit 130, a closed stdout is a quiet 141; never a traceback."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import synth_dataset, train_cmd, wait_for_epoch


def start(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "endofuse", *args], stderr=subprocess.PIPE, text=True, env=env,
                            **kwargs)


def interrupt_after(args: list[str], delay_s: float) -> tuple[int, str]:
    child = start(args, stdout=subprocess.DEVNULL)
    time.sleep(delay_s)
    child.send_signal(signal.SIGINT)
    try:
        _, err = child.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        child.kill()
        raise
    return child.returncode, err


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synth_dataset(tmp_path_factory.mktemp("data"), seed=2, pairs=4, test_pairs=1)


@pytest.mark.parametrize("delay_s", [0.3, 1.0, 2.5])
def test_ctrl_c_during_run_is_one_line_and_130(delay_s, tmp_path):
    code, err = interrupt_after(["run", "--wli", "synthetic", "--frames", "100000", "--report",
                                 str(tmp_path / "r.json")], delay_s)
    assert code == 130, err
    assert "Traceback" not in err and "interrupted" in err.strip().splitlines()[-1], err


@pytest.mark.parametrize("delay_s", [0.3, 1.5])
def test_ctrl_c_during_train_is_one_line_and_130(delay_s, dataset, tmp_path):
    code, err = interrupt_after(train_cmd(dataset, tmp_path / "run", "--epochs", "1000"), delay_s)
    assert code == 130, err
    assert "Traceback" not in err and "interrupted" in err.lower(), err


def test_ctrl_c_once_training_runs_saves_and_says_so_on_stderr(dataset, tmp_path):
    # The timed cases above may land in the imports or in training depending on the machine; this one is in training.
    run = tmp_path / "run"
    child = start(train_cmd(dataset, run, "--epochs", "1000"), stdout=subprocess.DEVNULL)
    try:
        wait_for_epoch(run, child, 1)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 130, err
    assert "Traceback" not in err, err
    assert "interrupted (SIGINT): saved resumable" in err.strip().splitlines()[-1], err
    assert (run / "last.pt").is_file()


def test_a_closed_stdout_ends_quietly_with_141(tmp_path):
    child = start(["synth", str(tmp_path / "d"), "--pairs", "2", "--test-pairs", "1", "--size", "48x56"],
                  stdout=subprocess.PIPE)
    child.stdout.close()  # the reader is gone before the command prints, as after `| head -1` (also `search`)
    err = child.stderr.read()
    assert child.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    assert (tmp_path / "d" / "Training.csv").is_file()  # the work itself was done and kept

