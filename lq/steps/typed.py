"""From a stage's declared parameters to the library's typed configs: the one place keys are read."""

from __future__ import annotations

from lq.config import StageParams
from lq.quant.config import QuantConfig
from lq.ssl.settings import LinearSettings, SslConfig, SslSettings, ViewSettings
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
    """INQ's settings when the grid cell's quantizer is `inq` (or `inq+<coreset>`), else None."""
    if p["quant.procedure"] != "inq":
        return None
    s = p[f"quantizers.{p.cell['quantizer']}"]  # inq's block, or that of its coreset value (inq+acs10)
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


def ssl(p: StageParams, method: str) -> SslConfig:
    """The self-supervised run of `method` (its `ssl.methods.<method>` block; the stage declares that
    block and train.device, deterministic, momentum, hflip, compile)."""
    block = dict(p[f"ssl.methods.{method}"])
    if block:
        block["views"] = ViewSettings(**{**block["views"], "crop": tuple(block["views"]["crop"])})
        block.update({k: tuple(block[k]) for k in ("weight_bits", "act_bits") if k in block})
    s = SslSettings(method, **block)
    runtime = Runtime(device=p["train.device"], deterministic=p["train.deterministic"], seed=p["train.seed"],
                      batch_size=s.batch_size, augment=True, hflip=p["train.hflip"], compile=p["train.compile"])
    schedule = Schedule(epochs=s.epochs, lr=s.lr, milestones=(), gamma=1.0, momentum=p["train.momentum"],
                        weight_decay=s.weight_decay)
    return SslConfig(s, runtime, schedule)


def pretrain_init(p: StageParams) -> SslConfig | None:
    """pretrain.init's self-supervised run, None for scratch (the seeded random start)."""
    return None if p["pretrain.init"] == "scratch" else ssl(p, p["pretrain.init"])


def linear(p: StageParams) -> LinearSettings:
    """`ssl.linear`: the head of the linear evaluation."""
    s = p["ssl.linear"]
    return LinearSettings(epochs=s["epochs"], lr=s["lr"], batch_size=s["batch_size"], weight_decay=s["weight_decay"],
                          momentum=p["train.momentum"], stem_bits=s["stem_bits"])
