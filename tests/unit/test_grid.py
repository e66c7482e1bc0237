"""The comparison grid: axis values to parameters, cells, path patterns; GPU claims for parallel jobs."""

from __future__ import annotations

import pytest

from lq import grid
from lq.errors import LqError
from lq.pipeline import fill, fixed_prefix, load_table, placeholders


def test_axis_values_become_parameters():
    assert grid.apply({"bits": "w2a8"}) == [("lifelong.weight_bits", 2), ("lifelong.act_bits", 8)]
    assert grid.apply({"seed": "12"}) == [("train.seed", 12)]
    assert dict(grid.apply({"quantizer": "lsq"})) == {"quant.weight_quantizer": "lsq", "quant.act_quantizer": "lsq",
                                                      "quant.procedure": "qat"}
    assert dict(grid.apply({"quantizer": "inq"})) == {"quant.weight_quantizer": "pow2", "quant.act_quantizer": "uniform",
                                                      "quant.procedure": "inq"}
    assert dict(grid.apply({"quantizer": "proxq"}))["quant.act_quantizer"] == "uniform"
    with pytest.raises(LqError, match="w4a4"):
        grid.apply({"bits": "4bit"})
    with pytest.raises(LqError, match="name=value"):
        grid.parse_assignments(["seed"])


def test_cells_are_the_product_of_the_named_axes_in_canonical_order():
    values = {"method": ["lifequant", "ewc"], "bits": ["w4a4"], "quantizer": ["proxq"], "seed": [0, 1]}
    assert grid.cells(values, ["seed"]) == [{"seed": "0"}, {"seed": "1"}]
    cells = grid.cells(values, ["seed", "method"])  # order of the argument does not matter
    assert cells == [{"method": "lifequant", "seed": "0"}, {"method": "lifequant", "seed": "1"},
                     {"method": "ewc", "seed": "0"}, {"method": "ewc", "seed": "1"}]
    assert grid.cells(values, []) == [{}]
    assert grid.cell_name({"seed": "1", "method": "ewc", "bits": "w4a4"}) == "ewc-w4a4-seed1"


def test_path_patterns():
    pattern = "metrics/seed{seed}/{quantizer}/{method}-{bits}.json"
    assert placeholders(pattern) == ["seed", "quantizer", "method", "bits"]
    assert fill(pattern, {"seed": "${item.seed}"}) == "metrics/seed${item.seed}/{quantizer}/{method}-{bits}.json"
    assert fixed_prefix(pattern) == "metrics"
    assert fixed_prefix("models/seed{seed}/pretrain.pt") == "models"


def test_every_stage_runs_per_exactly_the_axes_its_outputs_name():
    _, stages = load_table()
    axes = {s.name: set(s.axes) for s in stages}
    assert axes["download"] == axes["split"] == axes["replay"] == set()
    assert axes["count"] == {"method"}  # BaLL weights of the pool each method trains on
    assert axes["pretrain"] == {"seed"}
    assert axes["qat8"] == {"seed", "quantizer"}
    assert axes["lifelong"] == axes["evaluate"] == set(grid.LIFELONG_AXES) == set(grid.AXES) - {"ssl"}
    assert axes["ssl"] == axes["ssl_linear"] == {"ssl", "seed"}  # self-supervised: per method and seed
    assert axes["aggregate"] == set()
    aggregate = next(s for s in stages if s.name == "aggregate")
    assert aggregate.gathered(aggregate.deps["metrics"]) == ["seed", "quantizer", "method", "bits"]


# --- scale-out ------------------------------------------------------------------------------------

def test_parallel_jobs_claim_different_gpus(tmp_path):
    """Two processes asking for a free GPU out of two get different ones; a third falls back to 0."""
    import subprocess
    import sys

    code = ("import sys, time; from pathlib import Path; from lq.train.gpus import claim_free_gpu; "
            f"print(claim_free_gpu(2, Path({str(tmp_path)!r})), flush=True); time.sleep(float(sys.argv[1]))")
    first = subprocess.Popen([sys.executable, "-c", code, "5"], stdout=subprocess.PIPE, text=True)
    got_first = first.stdout.readline().strip()
    second = subprocess.Popen([sys.executable, "-c", code, "5"], stdout=subprocess.PIPE, text=True)
    got_second = second.stdout.readline().strip()
    third = subprocess.run([sys.executable, "-c", code, "0"], capture_output=True, text=True)
    assert {got_first, got_second} == {"0", "1"}
    assert third.stdout.strip() == "0"
    first.kill()
    first.wait()
    # the killed process's lock is released by the kernel: its GPU is free again
    again = subprocess.run([sys.executable, "-c", code, "0"], capture_output=True, text=True)
    assert again.stdout.strip() == got_first
    second.kill()
    second.wait()
