"""The wire format of `endofuse serve` and what a replica does with a batch (no Ray needed)."""
import os

import numpy as np
import pytest

from endofuse.realtime.engines import open_engine
from endofuse.realtime.serve import wire
from endofuse.realtime.serve.service import EngineOptions, SegmentService, ServeConfig, clock

SIZE = (160, 160)


def pair(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.random((1, 3, *SIZE), dtype=np.float32), rng.random((1, 3, *SIZE), dtype=np.float32)


def decode(headers, body, size=SIZE, arrived=0.0):
    return wire.decode_request({k.lower(): v for k, v in headers.items()}, body, size, arrived)


@pytest.mark.parametrize("dtype, atol", [("float32", 0.0), ("float16", 2 ** -11), ("uint8", 0.5 / 255)])
def test_round_trip_per_dtype(dtype, atol):
    wli, nbi = pair()
    headers, body = wire.encode_request(wli, nbi, dtype, deadline_ms=80)
    assert headers[wire.SHAPE] == "2,3,160,160" and headers[wire.DTYPE] == dtype
    assert len(body) == 2 * 3 * 160 * 160 * np.dtype(wire.WIRE_DTYPES[dtype]).itemsize
    request = decode(headers, body)
    assert request.deadline_ms == 80
    np.testing.assert_allclose(request.wli, wli, rtol=0, atol=atol + 1e-7)
    np.testing.assert_allclose(request.nbi, nbi, rtol=0, atol=atol + 1e-7)
    assert request.wli.dtype == np.float32 and request.wli.shape == (1, 3, *SIZE)


def test_wli_only_request_has_no_nbi():
    wli, _ = pair()
    headers, body = wire.encode_request(wli, None, "float32")
    assert headers[wire.SHAPE] == "1,3,160,160"
    assert decode(headers, body).nbi is None


@pytest.mark.parametrize("dtype, rtol", [("float32", 0.0), ("float16", 2 ** -11)])
def test_response_round_trip(dtype, rtol):
    logits = np.random.default_rng(1).standard_normal((1, 2, *SIZE)).astype(np.float32)
    headers, body = wire.encode_response(logits, {wire.QUEUE_MS: "1.5"}, dtype)
    assert headers[wire.QUEUE_MS] == "1.5" and len(body) == logits.size * np.dtype(dtype).itemsize
    decoded = wire.decode_response(headers, body)
    assert decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, logits, rtol=rtol, atol=1e-7)
    with pytest.raises(ValueError, match="bytes for logits"):
        wire.decode_response(headers, body[:-4])


@pytest.mark.parametrize("dtype, answer", [("float32", "float32"), ("float16", "float16"), ("uint8", "float16")])
def test_answer_dtype_follows_the_request(dtype, answer):
    wli, nbi = pair()
    assert decode(*wire.encode_request(wli, nbi, dtype)).answer_dtype == answer


@pytest.mark.parametrize("change, status, message", [
    ({wire.SHAPE: "2,3,128,128"}, 422, r"does not fit this model: send \(1 or 2, 3, 160, 160\)"),
    ({wire.SHAPE: "3,3,160,160"}, 422, "does not fit this model"),
    ({wire.SHAPE: "2;3"}, 400, "not a comma-separated shape"),
    ({wire.DTYPE: "int64"}, 415, "send one of uint8, float16, float32"),
    ({wire.DEADLINE: "soon"}, 400, "not a number of milliseconds"),
    ({wire.DEADLINE: "0"}, 400, r"outside \(0, 10000\] ms"),
])
def test_bad_headers_get_one_line_4xx(change, status, message):
    wli, nbi = pair()
    headers, body = wire.encode_request(wli, nbi, "float16")
    with pytest.raises(wire.WireError, match=message) as err:
        decode(headers | change, body)
    assert err.value.status == status and "\n" not in str(err.value)


def test_body_size_must_match_declared_shape():
    wli, nbi = pair()
    headers, body = wire.encode_request(wli, nbi, "float16")
    with pytest.raises(wire.WireError, match="declare 307200") as err:
        decode(headers, body + b"\0" * 10)
    assert err.value.status == 413
    with pytest.raises(wire.WireError, match="body has 307190 bytes") as err:
        decode(headers, body[:-10])
    assert err.value.status == 400


def test_nan_inputs_refused():
    wli, nbi = pair()
    wli[0, 0, 0, 0] = np.nan
    headers, body = wire.encode_request(wli, nbi, "float32")
    with pytest.raises(wire.WireError, match="NaN or infinity") as err:
        decode(headers, body)
    assert err.value.status == 422


def test_token_checked():
    wli, nbi = pair()
    good, _ = wire.encode_request(wli, nbi, token="s3cret")
    assert good[wire.AUTHORIZATION] == "Bearer s3cret"
    wire.check_token(good, "s3cret")
    wire.check_token({}, None)  # no token configured: every request passes
    bad, _ = wire.encode_request(wli, nbi, token="guess")
    for headers in (bad, {}):
        with pytest.raises(wire.WireError, match="missing or wrong token") as err:
            wire.check_token(headers, "s3cret")
        assert err.value.status == 401


@pytest.fixture(scope="module")
def engine():
    return open_engine(backend="torch")


class CountingEngine:
    """The real engine, counting the frames it is given (to see dropped requests cost nothing)."""

    def __init__(self, engine):
        self.inner, self.frames = engine, 0
        self.name, self.model_label = engine.name, engine.model_label
        self.input_size, self.num_classes = engine.input_size, engine.num_classes

    def infer(self, wli, nbi=None):
        self.frames += len(wli)
        return self.inner.infer(wli, nbi)


def test_batch_matches_single_requests_and_drops_late_ones(engine):
    counting = CountingEngine(engine)
    service = SegmentService(counting)
    t = clock()
    inputs = [pair(seed) for seed in range(5)]
    requests = [
        wire.SegmentRequest(inputs[0][0], inputs[0][1], 100.0, t),
        wire.SegmentRequest(inputs[1][0], None, 100.0, t),  # WLI-only: the other graph path
        wire.SegmentRequest(inputs[2][0], inputs[2][1], 50.0, t - 0.2),  # waited 200 ms > 50 ms deadline
        wire.SegmentRequest(inputs[3][0], inputs[3][1], 100.0, t),
        wire.SegmentRequest(inputs[4][0], None, 10.0, t - 1.0),  # also past its deadline
    ]
    results = service.run_batch(requests)
    for i in (2, 4):
        assert isinstance(results[i], wire.WireError) and results[i].status == 504
        assert "past its" in str(results[i])
    assert counting.frames == 3  # the two late requests never reached the engine
    for i in (0, 1, 3):
        logits, timings = results[i]
        reference = engine.infer(requests[i].wli, requests[i].nbi)  # the same request alone
        np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4)
        assert timings[wire.BATCH_SIZE] == "3" and float(timings[wire.COMPUTE_MS]) > 0
    health = service.health()
    assert health["batch_sizes"] == {"3": 1} and health["dropped_late"] == 2 and health["served"] == 3
    assert health["input_size"] == [160, 160]


def test_replica_engine_threads_follow_its_reserved_cpus():
    """Unless --threads is given, a replica's engine gets the CPUs Ray reserves for it (rounded up)."""
    assert ServeConfig().replica_engine().threads == 1
    assert ServeConfig(replica_cpus=2.5).replica_engine().threads == 3
    assert ServeConfig(replica_cpus=0.5).replica_engine().threads == 1
    given = ServeConfig(engine=EngineOptions(threads=4), replica_cpus=1)
    assert given.replica_engine().threads == 4 and given.engine.threads == 4


def test_local_ray_environment_sets_the_ingress_and_keeps_the_callers_other_settings(monkeypatch):
    """The --ingress choice always wins; the other settings are defaults an operator's environment overrides."""
    from endofuse.realtime.serve.service import HAPROXY_ENV, WORKER_NICENESS_ENV, local_ray_environment

    monkeypatch.setenv(HAPROXY_ENV, "0")
    monkeypatch.setenv(WORKER_NICENESS_ENV, "5")
    monkeypatch.delenv("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", raising=False)
    monkeypatch.delenv("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", raising=False)
    applied = local_ray_environment("haproxy")
    assert applied == {HAPROXY_ENV: "1", WORKER_NICENESS_ENV: "5",
                       "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
                       "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
    assert os.environ[HAPROXY_ENV] == "1" and os.environ[WORKER_NICENESS_ENV] == "5"
    assert local_ray_environment("proxy")[HAPROXY_ENV] == "0" == os.environ[HAPROXY_ENV]
    with pytest.raises(ValueError, match="haproxy, proxy"):
        local_ray_environment("nginx")
