"""Coreset training as a suffix of the quantizer axis (issue 13 item 2): `proxq+acs10` parses into the
quantizer's parameters plus coreset.selector and .fraction; a bare `proxq` is unchanged; bad values
name the bad part; the schema, the cross-key checks, the stage's params and the tables follow."""

from __future__ import annotations

import copy
import math
import re

import pytest

from lq import config as lqconfig
from lq import grid, timings
from lq.errors import LqError
from lq.pipeline import load_table
from tests.conftest import REPO

RAW = lqconfig.read_yaml(REPO / "params.yaml")
QUANTIZERS = lqconfig.load_schema()["$defs"]["quantizer"]["enum"]


def with_quantizers(*values: str, blocks: dict | None = None) -> dict:
    raw = copy.deepcopy(RAW)
    raw["grid"]["quantizer"] = list(values)
    raw["quantizers"].update({v: {} for v in values if "+" in v} if blocks is None else blocks)
    return raw


@pytest.mark.parametrize("value,selector,fraction", [
    ("proxq+acs10", "acs", 0.1), ("proxq+random10", "random", 0.1), ("lsq+evs30", "evs", 0.3),
    ("dorefa+ds1", "ds", 0.01), ("proxq_cdf+acs100", "acs", 1.0), ("proxq+full", "full", 1.0),
])
def test_a_coreset_suffix_sets_the_selector_and_fraction_beside_the_quantizers_keys(value, selector, fraction):
    base = value.split("+")[0]
    params = dict(grid.apply({"quantizer": value}))
    assert params == {**dict(grid.apply({"quantizer": base})), "coreset.selector": selector, "coreset.fraction": fraction}
    assert grid.split_quantizer(value) == (base, value.split("+")[1]) and grid.base_quantizer(value) == base


def test_inq_with_a_coreset_keeps_its_procedure():
    assert dict(grid.apply({"quantizer": "inq+acs50"})) == {
        "quant.weight_quantizer": "pow2", "quant.act_quantizer": "uniform", "quant.procedure": "inq",
        "coreset.selector": "acs", "coreset.fraction": 0.5}


def test_a_bare_value_sets_no_coreset_key_and_the_section_decides():
    for name in QUANTIZERS:
        assert not any(key.startswith("coreset.") for key, _ in grid.apply({"quantizer": name}))
        assert grid.split_quantizer(name) == (name, None)
    raw = copy.deepcopy(RAW)
    raw["coreset"].update(selector="evs", fraction=0.3)
    cell = lqconfig.resolve(raw, axes={"quantizer": "proxq"})
    assert (cell["coreset"]["selector"], cell["coreset"]["fraction"]) == ("evs", 0.3)
    # the suffix wins over the section for its own cells; every and schedule still come from the section
    cell = lqconfig.resolve(with_quantizers("proxq", "proxq+acs10") | {"coreset": raw["coreset"]},
                            axes={"quantizer": "proxq+acs10"})
    assert cell["coreset"] == {**raw["coreset"], "selector": "acs", "fraction": 0.1}


@pytest.mark.parametrize("value,part", [
    ("proxq+acs0", "coreset part 'acs0'"), ("proxq+acs05", "coreset part 'acs05'"),
    ("proxq+acs101", "coreset part 'acs101'"), ("proxq+full10", "coreset part 'full10'"),
    ("proxq+", "coreset part ''"), ("proxq+acs", "coreset part 'acs'"), ("proxq+top10", "coreset part 'top10'"),
    ("proxq+acs10+x", "coreset part 'acs10+x'"), ("prox+acs10", "quantizer part 'prox'"),
    ("+acs10", "quantizer part ''"),
])
def test_a_bad_composite_value_names_its_bad_part_and_the_allowed_forms(value, part):
    with pytest.raises(LqError) as cell:
        lqconfig.resolve(with_quantizers("proxq", value, blocks={}), axes={"quantizer": value})
    with pytest.raises(LqError) as grid_list:  # the grid itself (Snakemake's start, every step)
        lqconfig.resolve(with_quantizers("proxq", value, blocks={}))
    for message in (str(cell.value), str(grid_list.value)):
        assert part in message, message
        assert "Traceback" not in message
    assert "acs|evs|ds|random" in str(grid_list.value) or "known: proxq" in str(grid_list.value)
    assert f"grid.quantizer: '{value}'" in str(grid_list.value)


def test_a_plain_unknown_quantizer_keeps_the_lists_message():
    with pytest.raises(LqError, match=r"grid.quantizer.1 = \"apot\" is invalid: 'apot' is not one of"):
        lqconfig.resolve(with_quantizers("proxq", "apot"))


def test_a_composite_value_needs_its_settings_block_and_inq_blocks_are_checked():
    with pytest.raises(LqError, match=r"add `proxq\+acs10: \{\}` under `quantizers:`"):
        lqconfig.resolve(with_quantizers("proxq", "proxq+acs10", blocks={}))
    assert lqconfig.resolve(with_quantizers("proxq", "proxq+acs10"))["quantizers"]["proxq+acs10"] == {}
    # inq's coreset values carry INQ's settings, checked as INQ's own are
    inq = copy.deepcopy(RAW["quantizers"]["inq"])
    with pytest.raises(LqError, match=r"quantizers.inq\+acs10: unknown key|inq\+acs10.*required"):
        lqconfig.resolve(with_quantizers("inq", "inq+acs10"))  # `{}` lacks INQ's settings
    bad = {"inq+acs10": {**inq, "portions": [0.5, 0.75]}}
    with pytest.raises(LqError, match=r"quantizers.inq\+acs10.portions = \[0.5, 0.75\] must increase"):
        lqconfig.resolve(with_quantizers("inq", "inq+acs10", blocks=bad))
    # a proxq value's block takes no settings, like proxq's
    with pytest.raises(LqError, match=r"proxq\+acs10"):
        lqconfig.resolve(with_quantizers("proxq+acs10", blocks={"proxq+acs10": {"portions": [1]}}))
    with pytest.raises(LqError, match=r"pow2 puts weights on power-of-two levels"):  # base name's bit check
        lqconfig.resolve(with_quantizers("pow2+acs10") | {"grid": {**RAW["grid"], "quantizer": ["pow2+acs10"],
                                                                    "bits": ["w1a4"]}})


def test_a_cells_stage_params_track_its_own_block_and_read_its_coreset():
    from lq.steps import typed

    qat8 = next(s for s in load_table()[1] if s.name == "qat8")
    config = lqconfig.resolve(with_quantizers("proxq", "proxq+acs10"), axes={"quantizer": "proxq+acs10", "seed": "0"})
    keys = qat8.declared_params({"quantizer": "proxq+acs10", "seed": "0"}, config=config)
    assert "quantizers.proxq+acs10" in keys
    p = lqconfig.StageParams(config, keys, "qat8", {"quantizer": "proxq+acs10", "seed": "0"})
    assert p.run_name == "qat8-proxq+acs10-seed0"
    assert (typed.coreset(p).selector, typed.coreset(p).fraction) == ("acs", 0.1)
    # INQ with a coreset reads its own block
    raw = with_quantizers("inq", "inq+ds20", blocks={"inq+ds20": {**RAW["quantizers"]["inq"], "epochs_per_phase": 3}})
    cell = {"quantizer": "inq+ds20", "seed": "0"}
    config = lqconfig.resolve(raw, axes=cell)
    p = lqconfig.StageParams(config, qat8.declared_params(cell, config=config), "qat8", cell)
    assert typed.inq(p).epochs_per_phase == 3 and typed.coreset(p).selector == "ds"


def test_the_wildcard_accepts_composite_values_and_the_selectors_are_the_engines():
    from lq.train.coreset import SELECTORS

    assert sorted(grid.CORESET_SELECTORS) == sorted(SELECTORS)
    pattern = grid.axis("quantizer").pattern
    for value in ("proxq", "proxq_cdf", "proxq+acs10", "inq+full"):
        assert re.fullmatch(pattern, value)
    for value in ("proxq/acs10", "proxq-acs10", "proxq+ACS10"):
        assert not re.fullmatch(pattern, value)  # no path separator or cell-name separator
    # the schema's pattern and the parser accept the same suffixes
    schema = lqconfig.load_schema()["$defs"]["quantizer_value"]["anyOf"][1]["pattern"]
    for suffix in ("acs1", "acs10", "random100", "full", "acs0", "acs05", "full1", "acs101", "Acs10"):
        accepted = grid.CORESET_SUFFIX.fullmatch(suffix) is not None
        assert (re.fullmatch(schema, f"proxq+{suffix}") is not None) == accepted, suffix
    assert set(re.match(r"\^\(([^)]*)\)", schema)[1].split("|")) == set(QUANTIZERS)


def test_metrics_name_the_composite_value_even_at_32_bit_weights():
    from lq.evaluation import reported_quantizer
    from lq.quant.config import QuantConfig

    w4 = QuantConfig(weight_bits=4, act_bits=4, weight_quantizer="proxq", act_quantizer="uniform")
    w32 = QuantConfig(weight_bits=32, act_bits=4, weight_quantizer="proxq", act_quantizer="uniform")
    assert reported_quantizer(w4, "proxq+acs10") == "proxq+acs10" and reported_quantizer(w4, "proxq") == "proxq"
    assert reported_quantizer(w32, "proxq") == reported_quantizer(None, "proxq")  # as before
    assert reported_quantizer(w32, "proxq+acs10") == reported_quantizer(w32, "proxq") + "+acs10"


def timing(seconds: float, selector: str, seen: int) -> dict:
    return {"train_seconds": seconds, "selection_seconds": 0.0, "images_seen": seen, "pool_images": 1000,
            "epochs": 10, "coreset": selector, "fraction": 1.0 if selector == "full" else 0.1, "label_noise": 0.0,
            "every": 10, "rounds": []}


def test_the_timing_table_puts_coreset_rows_beside_full_with_the_measured_time_share():
    qat8 = [{**timing(10.0, "full", 1000), "seed": 0, "quantizer": "proxq"},
            {**timing(2.5, "acs", 100), "seed": 0, "quantizer": "proxq+acs10"},
            {**timing(4.0, "random", 100), "seed": 0, "quantizer": "lsq+random10"}]  # no full lsq row
    lifelong = [{**timing(s, sel, seen), "seed": 0, "method": "finetune", "bits": "w4a4", "quantizer": q,
                 "accuracy": 0.5} for q, sel, s, seen in (("proxq", "full", 40.0, 1000), ("proxq+acs10", "acs", 10.0, 100))]
    table = timings.timing_table(qat8, lifelong)
    assert list(table["quantizer"]) == ["proxq", "proxq+acs10", "lsq+random10", "proxq", "proxq+acs10"]
    assert list(table["time_share"])[:2] == [1.0, 0.25] and list(table["time_share"])[3:] == [1.0, 0.25]
    assert math.isnan(table.iloc[2]["time_share"])
    md = timings.markdown_table(table)
    assert "| qat8 | — | — | proxq+acs10 | 1 | acs f=0.1 R=10 | — | 2.5 | 0.0 | 100 | 0.100 |" in md
    assert md.splitlines()[2].endswith("| 1.000 |") and md.splitlines()[3].endswith("| 0.250 |")
    assert md.splitlines()[4].endswith("| — |")
