import dataclasses

import pytest

from eggs_ptp import EggsConfig, MagnitudeConfig, PruneConfig, RiaConfig, SparseGPTConfig, WandaConfig
from eggs_ptp.config import OwlAllocation
from eggs_ptp.methods import (
    MethodConfig,
    build_method,
    method_config,
    method_names,
    parse_method,
    register_method,
    split_methods,
)
from eggs_ptp.pattern import Pattern

TWO_FOUR = Pattern(2, 4)


def test_builtin_names_resolve_to_their_family_with_presets():
    assert set(method_names()) == {"magnitude", "wanda", "ria", "sparsegpt", "sparsegpt+refit", "eggs", "eggs+update"}
    assert method_config("eggs+update") == EggsConfig(update=True)
    assert method_config("sparsegpt+refit") == SparseGPTConfig(refit=True)
    assert method_config("wanda") == WandaConfig()
    assert PruneConfig(method="eggs+update").method == EggsConfig(update=True)


STAGES = [
    "target",
    "sequential",
    "swaps",
    "reconstruct",
    "quantize",
    "group_size",
    "asymmetric",
    "rtn",
    "quantize_head",
]  # every family composes with these


def test_configs_hold_only_their_family_settings_and_the_shared_stages():
    assert [f.name for f in dataclasses.fields(RiaConfig)] == [*STAGES, "alpha"]
    assert [f.name for f in dataclasses.fields(MagnitudeConfig)] == STAGES
    with pytest.raises(
        ValueError,
        match="method 'ria' has no setting b; its settings: alpha, asymmetric, group_size, quantize, quantize_head, "
        "reconstruct, rtn, sequential, swaps, target",
    ):
        method_config("ria", b=2)


@pytest.mark.parametrize("name", ["magnitude", "wanda", "ria", "sparsegpt", "eggs", "eggs+update"])
def test_every_family_composes_with_the_shared_stages(name):
    config = method_config(name, target="model", sequential=True)
    method = build_method(config, Pattern(2, 4))
    assert method.target is not None and method.sequential and method.needs_dense_stream and method.needs_hessian
    assert config.label == f"{name}(target=model, sequential=True)"
    assert parse_method(config.label) == config
    plain = build_method(method_config(name), Pattern(2, 4))
    assert plain.target is None and not plain.sequential and not plain.needs_dense_stream


def test_a_dense_model_target_always_calibrates_sequentially():
    assert build_method(method_config("sparsegpt", target="model"), Pattern(2, 4)).sequential


def test_an_unknown_target_is_one_clear_line():
    with pytest.raises(ValueError, match="target must be one of layer, model"):
        method_config("wanda", target="dense")


def test_each_type_is_registered_once():
    with pytest.raises(ValueError, match="already registered"):
        register_method(WandaConfig)(lambda config, pattern: None)

    @dataclasses.dataclass(frozen=True)
    class Unregistered(MethodConfig):
        family = "none"
        title = "None"
        names = ()

    with pytest.raises(ValueError, match="no method is registered for Unregistered"):
        build_method(Unregistered(), TWO_FOUR)


def test_methods_compose_stages_from_their_config():
    eggs = build_method(EggsConfig(rule="matching", b=2, tile_height=8), TWO_FOUR)
    assert (eggs.score.name, eggs.selector.rule, eggs.selector.b, eggs.selector.tile_height) == (
        "ria",
        "matching",
        2,
        8,
    )
    assert build_method(EggsConfig(), TWO_FOUR).selector.tile_height == 64 * 4  # the benchmarked default
    update = build_method(EggsConfig(update=True), TWO_FOUR)
    assert update.score is None and update.update is not None and update.refit is not None
    sparsegpt = build_method(SparseGPTConfig(), TWO_FOUR)
    assert sparsegpt.score is None and sparsegpt.needs_hessian and sparsegpt.refit is None
    assert build_method(SparseGPTConfig(refit=True), TWO_FOUR).refit is not None
    assert not build_method(MagnitudeConfig(), TWO_FOUR).needs_calibration


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: PruneConfig(method="obs"), "unknown method 'obs'; choose one of"),
        (lambda: PruneConfig(pattern="3:2"), "0 < N < M"),
        (lambda: PruneConfig(method="eggs", pattern="0.5"), "needs an N:M pattern"),
        (lambda: PruneConfig(method=EggsConfig(b=3)), "b must lie in 0..N = 0..2"),
        (lambda: PruneConfig(method=EggsConfig(tile_height=6)), "multiple of M = 4"),
        (lambda: EggsConfig(rule="greedy"), "rule must be one of"),
        (lambda: PruneConfig(nsamples=0), "nsamples must be at least 1"),
        (lambda: SparseGPTConfig(damping=0), "damping must be positive"),
        (lambda: RiaConfig(alpha=-1), "alpha must be non-negative"),
        (lambda: PruneConfig(method="wanda", pattern="2:4", allocation=OwlAllocation()), "needs an unstructured"),
        (lambda: OwlAllocation(deviation=1.5), "owl lambda must lie in"),
        (lambda: PruneConfig(method=42), "method must be a method config"),
    ],
)
def test_config_names_the_bad_setting(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_labels_name_the_settings_that_differ_and_parse_back():
    assert EggsConfig().label == "eggs"
    assert EggsConfig(b=2, rule="diagonal").label == "eggs(b=2, rule=diagonal)"
    assert EggsConfig(update=True, b=2).label == "eggs+update(b=2)"
    for config in (
        EggsConfig(b=2, rule="diagonal", tile_height=16),
        SparseGPTConfig(refit=True, damping=0.1),
        RiaConfig(alpha=1.0),
        EggsConfig(auto=True, update=True),
    ):
        assert parse_method(config.label) == config
    assert parse_method("eggs(b=1)") == EggsConfig()
    assert parse_method("eggs( b = 2 , rule = 'matching' )") == EggsConfig(b=2, rule="matching")
    with pytest.raises(ValueError, match="closed by"):
        parse_method("eggs(b=2")
    with pytest.raises(ValueError, match="is not KEY=VALUE"):
        parse_method("eggs(2)")


def test_method_lists_split_outside_parentheses():
    assert split_methods("eggs(b=1, rule=diagonal),ria, eggs+update") == [
        "eggs(b=1, rule=diagonal)",
        "ria",
        "eggs+update",
    ]


def test_config_round_trips_and_refuses_foreign_records():
    for config in (
        PruneConfig(method="ria", pattern="4:8", include=("*.mlp.*",)),
        PruneConfig(method=EggsConfig(b=2, update=True, tile_height=8), permute=True),
        PruneConfig(method="wanda", pattern="0.5", allocation=OwlAllocation(0.1, 4.0)),
    ):
        record = config.to_dict()
        assert record["schema_version"] == 2 and record["method"]["name"] == config.method.name
        assert PruneConfig.from_dict(record) == config
    with pytest.raises(ValueError, match="not a PruneConfig"):
        PruneConfig.from_dict({"type": "Other"})
    with pytest.raises(ValueError, match="schema version 99"):
        PruneConfig.from_dict({**PruneConfig().to_dict(), "schema_version": 99})


def test_version_1_records_load_with_their_method_settings():
    flat = {
        "type": "PruneConfig",
        "schema_version": 1,
        "method": "eggs+update",
        "pattern": "4:8",
        "b": 2,
        "rule": "diagonal",
        "tile_height": 16,
        "alpha": 0.5,
        "nsamples": 8,
        "seqlen": 64,
        "seed": 3,
        "calib": "wiki",
        "include": [],
        "exclude": ["*.lm_head"],
        "damping": 0.05,
        "blocksize": 64,
        "auto": False,
        "permute": True,
        "allocation": "uniform",
        "owl_lambda": 0.08,
        "owl_threshold": 5.0,
    }
    config = PruneConfig.from_dict(flat)
    assert config.method == EggsConfig(b=2, rule="diagonal", tile_height=16, update=True, damping=0.05, blocksize=64)
    assert (config.pattern, config.seed, config.exclude, config.permute) == ("4:8", 3, ("*.lm_head",), True)
    owl = PruneConfig.from_dict(
        {**flat, "method": "wanda", "pattern": "0.5", "permute": False, "allocation": "owl", "owl_lambda": 0.1}
    )
    assert owl.method == WandaConfig() and owl.allocation == OwlAllocation(0.1, 5.0)
