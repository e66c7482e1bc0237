"""From a stage's declared parameters to the library's typed configs: the one place keys are read."""

from __future__ import annotations

from lq.config import StageParams
from lq.quant.config import QuantConfig
from lq.train.coreset import CoresetSettings
from lq.train.inq import InqSettings
from lq.train.settings import Runtime, Schedule


def runtime(p: StageParams) -> Runtime:
    return Runtime(device=p["train.device"], deterministic=p["train.deterministic"], seed=p["train.seed"],
                   batch_size=p["train.batch_size"], eval_batch_size=p.get("train.eval_batch_size", 100),
                   augment=p["train.augment"], hflip=p["train.hflip"], compile=p["train.compile"])


def schedule(p: StageParams, section: str) -> Schedule:
    return Schedule(epochs=p[f"{section}.epochs"], lr=p[f"{section}.lr"], milestones=tuple(p[f"{section}.milestones"]),
                    gamma=p["train.lr_gamma"], momentum=p["train.momentum"], weight_decay=p["train.weight_decay"])


def quant(p: StageParams, section: str) -> QuantConfig | None:
    """The quantization of `section`'s bit widths with the grid cell's quantizer (None: float).

    A 32-bit side keeps the default quantizer name: it is the identity whatever its name.
    """
    weight_bits, act_bits = p[f"{section}.weight_bits"], p[f"{section}.act_bits"]
    if weight_bits == 32 and act_bits == 32:
        return None
    return QuantConfig(weight_bits=weight_bits, act_bits=act_bits,
                       weight_quantizer=p["quant.weight_quantizer"] if weight_bits < 32 else "proxq",
                       act_quantizer=p["quant.act_quantizer"] if act_bits < 32 else "uniform",
                       act_range=p["model.act_range"])


def inq(p: StageParams) -> InqSettings | None:
    """INQ's settings when the grid cell's quantizer is `inq`, else None."""
    if p["quant.procedure"] != "inq":
        return None
    s = p["quantizers.inq"]
    return InqSettings(portions=tuple(s["portions"]), partition=s["partition"], epochs_per_phase=s["epochs_per_phase"],
                       milestones=tuple(s["milestones"]))


def ptq(p: StageParams):
    """The PTQ sweep's settings (lq.ptq.Settings); the calibration sample is drawn with the cell's seed."""
    from lq.ptq import Settings

    return Settings(weight_bits=tuple(p["ptq.weight_bits"]), act_bits=tuple(p["ptq.act_bits"]),
                    weight_quantizer=p["ptq.weight_quantizer"], act_quantizer=p["ptq.act_quantizer"],
                    calibration_images=p["ptq.calibration_images"], batch_size=p["train.eval_batch_size"],
                    device=p["train.device"], seed=p["train.seed"])

def coreset(p: StageParams) -> CoresetSettings:
    """`coreset.*`: the selector qat8 and every lifelong task train with (full: none)."""
    return CoresetSettings(selector=p["coreset.selector"], fraction=p["coreset.fraction"], every=p["coreset.every"],
                           schedule=p["coreset.schedule"])


def data_noise(p: StageParams) -> dict:
    """The recipe fields of `data.label_noise`: the share flipped and the data seed that picks them."""
    return {"label_noise": p["data.label_noise"], "data_seed": p["seed"]}
