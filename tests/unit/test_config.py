"""params.yaml: presets, overrides and the schema's messages."""

import copy

import pytest

from lq import config as lqconfig
from lq import grid
from lq.config import REPO_ROOT
from lq.errors import LqError

RAW = lqconfig.read_yaml(REPO_ROOT / "params.yaml")


def test_committed_params_are_valid_for_every_preset():
    lqconfig.validate_all_presets(RAW)


def test_paper_preset_is_the_papers_configuration():
    paper = lqconfig.resolve(RAW, [("preset", "paper")])
    assert paper["data"]["source"] == "cifar100"
    assert paper["model"]["arch"] == "resnet20"
    assert paper["split"] == {"num_tasks": 3, "diminish_rate": 0.25, "train_per_class": None}
    assert paper["replay"]["replay_rate"] == 0.2
    assert (paper["qat8"]["weight_bits"], paper["qat8"]["act_bits"]) == (8, 8)
    assert paper["grid"]["bits"] == ["w4a4"] and paper["grid"]["method"] == ["lifequant"]
    cell = lqconfig.resolve(RAW, [("preset", "paper")], {"bits": "w4a4", "method": "lifequant"})
    assert (cell["lifelong"]["weight_bits"], cell["lifelong"]["act_bits"]) == (4, 4)
    assert paper["lifelong"]["methods"]["lifequant"]["ll_lambda"] == 100
    assert paper["lifelong"]["epochs"] == 30 and paper["lifelong"]["milestones"] == [10, 20]


def test_override_beats_file_and_parses_yaml():
    config = lqconfig.resolve(RAW, [lqconfig.parse_override("split.num_tasks=5"),
                                    lqconfig.parse_override("pretrain.milestones=[1, 2]")])
    assert config["split"]["num_tasks"] == 5
    assert config["pretrain"]["milestones"] == [1, 2]


# (key, bad value, words the message must contain)
INVALID = [
    ("split.diminish_rate", 25, "split.diminish_rate = 25"),
    ("split.diminish_rate", -0.1, "[0, 1)"),
    ("split.num_tasks", 0, "split.num_tasks = 0"),
    ("split.num_tasks", 2.5, "integer"),
    ("replay.replay_rate", 0, "(0, 1]"),
    ("replay.replay_rate", 1.2, "(0, 1]"),
    ("seed", -1, "seed = -1"),
    ("seed", "abc", "seed"),
    ("data.source", "imagenet", "digits"),
    ("data.test_fraction", 1.0, "(0, 1)"),
    ("data.download", "True", "true/false"),
    ("model.arch", "resnet18", "registered model name"),
    ("train.device", "gpu", "cuda:N"),
    ("train.batch_size", 0, ">= 1"),
    ("grid.bits", ["w9a4"], "w4a4"),
    ("grid.bits", ["4"], "wKaK"),
    ("grid.method", ["magic"], "lifelong method"),
    ("grid.method", [], "non-empty"),
    ("grid.seed", [0, 0], "distinct"),
    ("grid.seed", [-1], "grid.seed"),
    ("grid.quantizer", ["apot"], "quantizer"),
    ("grid.quantizer", "proxq", "non-empty list"),
    ("lifelong.methods.ewc.ll_lambda", -1, ">= 0"),
    ("lifelong.methods", 100, "one settings block per lifelong method"),
    ("pretrain.lr", 0, "> 0"),
]


@pytest.mark.parametrize("key,value,words", INVALID, ids=[f"{k}={v!r}" for k, v, _ in INVALID])
def test_invalid_values_are_named(key, value, words):
    raw = copy.deepcopy(RAW)
    lqconfig.set_key(raw, key, value)
    with pytest.raises(LqError) as info:
        lqconfig.resolve(raw)
    assert key in str(info.value)
    assert words in str(info.value)


def test_unknown_key_is_reported():
    raw = copy.deepcopy(RAW)
    raw["split"]["num_task"] = 3
    with pytest.raises(LqError, match="num_task"):
        lqconfig.resolve(raw)


def test_unknown_preset():
    with pytest.raises(LqError, match="preset = 'papr'"):
        lqconfig.resolve(RAW, [("preset", "papr")])


def test_bad_value_inside_a_preset_is_caught():
    raw = copy.deepcopy(RAW)
    raw["presets"]["paper"]["split"]["diminish_rate"] = 25
    with pytest.raises(LqError, match="(?s)preset 'paper'.*split.diminish_rate"):
        lqconfig.validate_all_presets(raw)


def test_stage_params_refuse_undeclared_keys():
    view = lqconfig.StageParams(lqconfig.resolve(RAW), ["split.num_tasks"], "split")
    assert view["split.num_tasks"] == RAW["split"]["num_tasks"]
    with pytest.raises(KeyError, match="does not declare"):
        view["replay.replay_rate"]


def test_malformed_override():
    with pytest.raises(LqError, match="key=value"):
        lqconfig.parse_override("split.num_tasks")


def test_a_cell_sets_the_keys_its_axes_stand_for():
    cell = lqconfig.resolve(RAW, axes={"method": "ewc", "bits": "w2a8", "quantizer": "lsq", "seed": "7"})
    assert cell["lifelong"]["method"] == "ewc"
    assert (cell["lifelong"]["weight_bits"], cell["lifelong"]["act_bits"]) == (2, 8)
    assert cell["quant"] == {"weight_quantizer": "lsq", "act_quantizer": "lsq", "procedure": "qat"}
    assert cell["train"]["seed"] == 7
    assert lqconfig.resolve(RAW, axes={"quantizer": "dorefa"})["quant"]["act_quantizer"] == "uniform"
    # INQ is a procedure on pow2 weights, not a weight quantizer of its own
    assert lqconfig.resolve(RAW, axes={"quantizer": "inq"})["quant"] == {
        "weight_quantizer": "pow2", "act_quantizer": "uniform", "procedure": "inq"}


def test_a_cell_value_outside_the_schema_is_named():
    with pytest.raises(LqError, match="lifelong.weight_bits = 9"):
        lqconfig.resolve(RAW, axes={"bits": "w9a4"})
    with pytest.raises(LqError, match="unknown grid axis 'lr'"):
        lqconfig.resolve(RAW, axes={"lr": "0.1"})


def test_a_preset_cannot_set_the_grid():
    raw = copy.deepcopy(RAW)
    raw["presets"]["paper"]["grid"] = {"seed": [1]}
    with pytest.raises(LqError, match="cannot set `grid`"):
        lqconfig.resolve(raw)


def test_schema_enums_are_the_registries():
    """The schema names what the code can build: models, weight and activation quantizers."""
    from lq.models import list_models
    from lq.quant.config import ACT_QUANTIZERS, WEIGHT_QUANTIZERS

    schema = lqconfig.load_schema()
    assert sorted(schema["properties"]["model"]["properties"]["arch"]["enum"]) == list_models()
    assert sorted(schema["$defs"]["weight_quantizer"]["enum"]) == sorted(WEIGHT_QUANTIZERS)
    # the grid's quantizer axis: every weight quantizer (straight-through QAT) and every procedure
    assert sorted(schema["$defs"]["quantizer"]["enum"]) == sorted([*WEIGHT_QUANTIZERS, *grid.PROCEDURES])
    assert sorted(schema["properties"]["quantizers"]["required"]) == sorted(schema["$defs"]["quantizer"]["enum"])
    assert sorted(schema["properties"]["quant"]["properties"]["act_quantizer"]["enum"]) == sorted(ACT_QUANTIZERS)
