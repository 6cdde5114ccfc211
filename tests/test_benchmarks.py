"""benchmarks/: every script answers --help, the shared timing/FLOP/JSON helpers, and the generated docs."""
from __future__ import annotations

import json
import os

import pytest
import torch

from endofuse.machine import describe_machine, machine_line, time_calls
from endofuse.model.flops import pair_flops

from conftest import BENCHMARKS, load_benchmark

SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.stem.startswith("_"))


def test_the_issue_names_every_script():
    assert {"kernels", "model", "train", "engines", "soak", "demo_roundtrip", "make_docs"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_answers_help(name, capsys):
    with pytest.raises(SystemExit) as stop:
        load_benchmark(name).main(["--help"])
    assert stop.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_time_calls_times_each_call_after_the_warmup():
    ticks = iter(range(100))
    calls = []
    samples = time_calls(lambda: calls.append(1), 3, warmup=2, clock=lambda: next(ticks) * 0.002)
    # 2 untimed calls, then 3 calls each timed across one 2 ms tick of the fake clock
    assert len(calls) == 5 and samples == pytest.approx([2.0, 2.0, 2.0])


def test_time_calls_runs_sync_inside_the_timed_region():
    events = []
    time_calls(lambda: events.append("call"), 2, warmup=1, sync=lambda: events.append("sync"))
    assert events == ["call", "sync", "call", "sync", "call", "sync"]


class _TwoConvs(torch.nn.Module):
    """3 -> 4 channel 1x1 conv on each 8x8 input: 3*4*64 multiply-adds per image."""

    img_size = 8

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1, bias=False)

    def forward(self, wli, nbi):
        return self.conv(wli) if nbi is None else self.conv(wli) + self.conv(nbi)


def test_pair_flops_counts_two_per_multiply_add():
    model = _TwoConvs()
    assert pair_flops(model) == 2 * (2 * 3 * 4 * 64)
    assert pair_flops(model, wli_only=True) == 2 * 3 * 4 * 64


def test_machine_description_names_cpus_load_and_versions():
    machine = describe_machine()
    assert machine["cpus"] == os.cpu_count() and machine["torch"] == torch.__version__
    assert machine["load_average"] is None or len(machine["load_average"]) == 3
    assert machine_line(machine).startswith("machine: ")


def test_a_kernels_run_writes_its_record(tmp_path):
    out = tmp_path / "kernels.json"
    assert load_benchmark("kernels").main(["--ops", "mmd", "--repeats", "2", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["benchmark"] == "kernels" and rec["command"].startswith("python benchmarks/kernels.py --ops mmd")
    assert rec["machine"]["cpus"] == os.cpu_count()
    (tab,) = rec["tables"]
    assert [r[2] for r in tab["rows"]] == ["fwd", "fwd+bwd"]
    col = tab["columns"].index
    for row in tab["rows"]:  # the ratio column is reference / fused of the same row
        assert row[col("ref/fused")] == pytest.approx(row[col("reference ms")] / row[col("fused ms")])


def test_cells_are_formatted_by_size():
    cell = load_benchmark("make_docs").cell
    assert [cell(v) for v in (None, 1234.56, 12.345, 0.123456, float("nan"), True, 7, "x")] == \
        ["-", "1234.6", "12.35", "0.1235", "n/a", "True", "7", "x"]


def test_an_endofuse_bench_report_becomes_a_table():
    make_docs = load_benchmark("make_docs")
    lat = {"p50": 10.0, "p90": 11.0, "p99": 12.0, "p999": 13.0, "max": 14.0, "mean": 10.5}
    mode = {"fps": 50.0, "latency_ms": lat, "dropped": 0, "stale_pairs": 1, "nbi_missing": 2}
    report = {"model": "tiny", "engine": "onnxruntime", "input_size": [224, 224], "frames": 600, "source": "synthetic",
              "engine_only": {"fps": 100.0, "latency_ms": lat}, "modes": {"max": mode}, "efficiency": 0.5,
              "machine": describe_machine()}
    rec = make_docs.normalise("pipeline.json", report)
    assert rec["command"] == "endofuse bench --engine onnxruntime --frames 600 --json benchmarks/results/pipeline.json"
    (tab,) = rec["tables"]
    assert tab["rows"] == [["engine only", 100.0, 10.0, 11.0, 12.0, 14.0, None, None, None],
                           ["max", 50.0, 10.0, 11.0, 12.0, 14.0, 0, 1, 2]]


def test_committed_docs_are_what_the_committed_json_gives():
    # docs/benchmarks.md and the README's headline table are generated; this fails when either drifts
    assert load_benchmark("make_docs").main(["--check"]) == 0
