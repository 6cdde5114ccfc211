"""Thread-count flags (`--threads`, `--workers`): 1..the CPUs this process may use, refused otherwise in one line
before any engine opens; a valid count reaches the engine or torch."""
import json
import os

import pytest
import torch

from endofuse import cli
from endofuse.checks import check_threads, usable_cpus

from conftest import ColourThresholdEngine

CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

COMMANDS = {
    "run": ["run", "--wli", "synthetic", "--frames", "3"],
    "bench": ["bench", "--frames", "10"],
    "evaluate": ["evaluate", "--data", "nowhere", "--out", "nowhere-out"],
    "export": ["export", "--format", "onnx", "--out", "nowhere.onnx"],
}


@pytest.fixture
def no_engine(monkeypatch):
    """Any engine opened is recorded: a refused count must open none."""
    import endofuse.realtime.engines as engines

    opened = []
    monkeypatch.setattr(engines, "open_engine", lambda *a, **k: opened.append(k.get("threads"))
                        or ColourThresholdEngine((32, 40), threshold=0.7))
    return opened


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("value", ["10000", "0", "-3", str(CPUS + 1)])
def test_each_command_refuses_a_thread_count_outside_the_cpus(command, value, no_engine, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main([*COMMANDS[command], "--threads", value]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line
    assert f"--threads {value}" in err and f"from 1 to {CPUS}" in err
    assert no_engine == [] and os.listdir(tmp_path) == []  # nothing opened, nothing written


@pytest.mark.parametrize("value", ["10000", "0"])
def test_bench_refuses_a_worker_count_outside_the_cpus(value, no_engine, capsys):
    assert cli.main(["bench", "--frames", "10", "--workers", value]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--workers {value}" in err and no_engine == []


def test_the_limit_is_the_affinity_mask():
    assert usable_cpus() == CPUS
    assert check_threads(None) is None and check_threads(1) == 1 and check_threads(CPUS) == CPUS
    with pytest.raises(Exception, match=f"threads {CPUS + 1}: must be a whole number from 1 to {CPUS}"):
        check_threads(CPUS + 1, "threads")


def test_open_engine_refuses_an_absurd_count_before_loading_anything(monkeypatch):
    from endofuse.errors import EndofuseError
    from endofuse.realtime.engines import factory

    monkeypatch.setattr(factory, "_resolve_source", lambda *a: pytest.fail("a model was looked up"))
    with pytest.raises(EndofuseError, match="threads 10000"):
        factory.open_engine(None, backend="onnxruntime", threads=10000)


def test_a_valid_count_still_reaches_the_engine(no_engine, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--threads", str(CPUS), "--frames", "10", "--warmup", "1", "--ring", "2",
                     "--paced-fps", "200", "--runtime", "native", "--json", str(out)]) == 0, capsys.readouterr().err
    assert no_engine == [CPUS]
    assert json.loads(out.read_text())["engine_threads"] == {"threads": CPUS, "chosen_by": "--threads"}
    assert cli.main(["run", "--wli", "synthetic", "--frames", "3", "--threads", "1"]) == 0
    assert no_engine == [CPUS, 1]


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_a_valid_count_sets_torch_threads(command, monkeypatch, tmp_path):
    """evaluate and export run torch on the CPU: --threads is its thread count while the command runs."""
    import endofuse.evaluate_command
    from endofuse.errors import EndofuseError
    from endofuse.realtime.engines import factory

    seen = []

    def record(*_):
        seen.append(torch.get_num_threads())
        raise EndofuseError("stopped here by the test")

    monkeypatch.chdir(tmp_path)
    if command == "evaluate":
        monkeypatch.setattr(endofuse.evaluate_command.dataset, "main", record)
        argv = ["evaluate", "--data", "d", "--out", "o", "--threads", "1"]
    else:
        monkeypatch.setattr(factory, "load_model_and_label", record)  # the export's first torch work
        argv = ["export", "--format", "onnx", "--out", "m.onnx", "--threads", "1"]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert cli.main(argv) == 1
    finally:
        torch.set_num_threads(before)
    assert seen == [1]
