import pytest

from eggs_ptp import PruneConfig
from eggs_ptp.methods import build_method, method_names, register_method


def test_builtin_methods_are_registered():
    assert set(method_names()) == {"magnitude", "wanda", "ria", "sparsegpt", "sparsegpt+refit", "eggs", "eggs+update"}


def test_duplicate_names_are_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_method("wanda", "again")(lambda config: None)


def test_methods_compose_stages():
    eggs = build_method(PruneConfig(method="eggs", rule="matching", b=2, tile_height=8))
    assert (eggs.score.name, eggs.selector.rule, eggs.selector.b, eggs.selector.tile_height) == ("ria", "matching", 2, 8)
    sparsegpt = build_method(PruneConfig(method="sparsegpt"))
    assert sparsegpt.score is None and sparsegpt.needs_hessian
    assert not build_method(PruneConfig(method="magnitude")).needs_calibration


@pytest.mark.parametrize("changes,message", [
    ({"method": "obs"}, "unknown method 'obs'; choose one of"),
    ({"pattern": "3:2"}, "0 < N < M"),
    ({"method": "eggs", "pattern": "0.5"}, "needs an N:M pattern"),
    ({"b": 3}, "b must lie in 0..N = 0..2"),
    ({"tile_height": 6}, "multiple of M = 4"),
    ({"rule": "greedy"}, "rule must be one of"),
    ({"nsamples": 0}, "nsamples must be at least 1"),
    ({"method": "sparsegpt", "damping": 0}, "damping must be positive"),
])
def test_config_names_the_bad_field(changes, message):
    with pytest.raises(ValueError, match=message):
        PruneConfig(**changes)


def test_non_eggs_methods_ignore_eggs_settings():
    assert PruneConfig(method="wanda", pattern="3:5").pattern == "3:5"


def test_config_round_trips_and_refuses_foreign_records():
    config = PruneConfig(method="ria", pattern="4:8", include=("*.mlp.*",))
    assert PruneConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="not a PruneConfig"):
        PruneConfig.from_dict({"type": "Other"})
    with pytest.raises(ValueError, match="schema version"):
        PruneConfig.from_dict({**config.to_dict(), "schema_version": 99})
