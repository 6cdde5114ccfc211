"""Dynamic Training Monitoring: factors from relative gap rates, by hand; state round trip."""
import pytest

from endofuse.train.dtm import TrainingMonitor


def test_factors_follow_relative_rates_by_hand():
    dtm = TrainingMonitor(terms=("relation", "prototype"), decay=0.5, alpha=1.0, low=0.2, high=5.0)
    assert dtm.factors() == {"relation": 1.0, "prototype": 1.0}
    dtm.observe({"relation": 2.0, "prototype": 0.0})  # a zero gap does not start prototype's clock
    assert dtm.factors() == {"relation": 1.0, "prototype": 1.0}
    dtm.observe({"relation": 1.0, "prototype": 4.0})
    # relation: ema = 0.5*2 + 0.5*1 = 1.5, r = 0.75; prototype: initial 4, r = 1
    dtm.observe({"relation": 0.5, "prototype": 1.0})
    # relation: ema = 0.5*1.5 + 0.25 = 1.0, r = 0.5; prototype: ema = 2 + 0.5 = 2.5, r = 0.625
    mean = (0.5 + 0.625) / 2
    f = dtm.factors()
    assert f["relation"] == pytest.approx(0.5 / mean) and f["prototype"] == pytest.approx(0.625 / mean)
    assert f["prototype"] > 1.0 > f["relation"]  # the slower-closing gap gets more weight


def test_clipping_and_state_round_trip():
    dtm = TrainingMonitor(terms=("a", "b"), decay=0.0, alpha=2.0, low=0.5, high=1.5)
    dtm.observe({"a": 1.0, "b": 1.0})
    dtm.observe({"a": 0.01, "b": 1.0})
    f = dtm.factors()
    assert f == {"a": 0.5, "b": 1.5}  # (0.0198)^2 and (1.98)^2 clipped
    again = TrainingMonitor.from_state(dtm.state_dict())
    assert again == dtm and again.factors() == f


def test_method_options_checks_and_overrides():
    from endofuse.errors import EndofuseError
    from endofuse.train.methods import MethodOptions, parse_distill

    assert MethodOptions().model_overrides() == {}
    assert MethodOptions(negatives="cluster", clusters=8).model_overrides() == {
        "negatives": "cluster", "clusters": 8}
    assert MethodOptions(fusion="dmaf", mir=True, clusters=8).model_overrides() == {"fusion": "dmaf", "mir": True}
    assert parse_distill("prototype, relation") == ("prototype", "relation")
    with pytest.raises(EndofuseError, match="--distill: unknown"):
        parse_distill("relation,colour")
    with pytest.raises(EndofuseError, match="--dtm"):
        MethodOptions(dtm=True).check("tiny")
    with pytest.raises(EndofuseError, match="paper keeps the reference fusion"):
        MethodOptions(fusion="dmaf").check("paper")
    MethodOptions(fusion="dmaf", distill=("relation",), dtm=True).check("tiny")
