"""The soak script's memory verdict (hand-computed cases) and a short real soak with the stand-in engine."""
import pytest

from conftest import ColourThresholdEngine, load_benchmark

soak_script = load_benchmark("soak")
memory_verdict, resident_bytes, soak = soak_script.memory_verdict, soak_script.resident_bytes, soak_script.soak

MB = 2**20


def test_verdict_uses_the_first_sample_after_settling_as_baseline():
    samples = [(100, 50 * MB), (500, 100 * MB), (1000, 104 * MB), (1500, 103 * MB)]
    verdict = memory_verdict(samples, settle=500, tolerance=0.05)
    assert verdict["baseline_mb"] == 100 and verdict["peak_mb"] == 104 and verdict["final_mb"] == 103
    assert verdict["growth"] == pytest.approx(0.04) and verdict["flat"]


def test_verdict_flags_growth_beyond_the_tolerance():
    samples = [(500, 100 * MB), (1000, 103 * MB), (1500, 106 * MB)]
    assert not memory_verdict(samples, settle=500, tolerance=0.05)["flat"]


def test_verdict_needs_two_samples():
    with pytest.raises(ValueError, match="two memory samples"):
        memory_verdict([(100, MB)], settle=0, tolerance=0.05)


def test_resident_bytes_sees_an_allocation():
    before = resident_bytes()
    block = bytearray(64 * MB)
    block[:: 4096] = b"\x01" * len(block[:: 4096])  # touch every page so it is resident
    assert resident_bytes() - before > 32 * MB


def test_short_soak_is_flat():
    result = soak(ColourThresholdEngine((32, 32)), frames=800, every=50, settle=200, ring=4)
    assert result["frames"] == 800 and len(result["rss_samples_mb"]) == 16
    assert result["memory"]["flat"], result["rss_samples_mb"]
