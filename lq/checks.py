"""Checks a JSON schema cannot express, run before any stage does work.

`lq.config.resolve` runs `check_config` after the schema (so the Snakefile, every step and every
preset get it): milestones past the epoch count, lifelong splits whose tasks do not move, and
images too small for the model, for the sources whose class count and image size are known
without ingesting them (digits, CIFAR-100; a folder tree is peeked at). `check_device` needs the
machine that trains, so it runs where the training runs (see its docstring).

Everything here is torch-free, so the Snakefile can validate without importing torch; the
split arithmetic is shared with `lq.tasks`, which repeats the check when the split is made.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lq.grid import base_quantizer
from lq.errors import LqError

TRAINING_SECTIONS = ("pretrain", "qat8", "lifelong")

# Class count and image size (height, width) of the sources that do not need ingesting to know them.
KNOWN_SOURCES = {"digits": (10, (8, 8)), "cifar100": (100, (32, 32)), "fashion_mnist": (10, (28, 28)),
                 "mnist": (10, (28, 28))}

# How many stride-2 stages each registered model has. Each is a 3x3 convolution with padding 1
# (a side s becomes ceil(s / 2)); the global average pool then removes what is left. A test
# builds every registered model and checks its last feature map against this table.
STRIDE2_STAGES = {"resnet8": 2, "resnet20": 2, "resnet32": 2, "resnet56": 2, "mobilenetv2": 3}


def check_config(config: Mapping[str, Any]) -> None:
    """Raise LqError listing every cross-key problem of a schema-valid, resolved configuration."""
    problems = [*milestone_problems(config), *quantizer_problems(config), *source_problems(config),
                *ssl_problems(config)]
    if problems:
        raise LqError("invalid parameters:\n  " + "\n  ".join(problems))


# --------------------------------------------------------------------------- milestones


def milestone_problems(config: Mapping[str, Any]) -> list[str]:
    """Milestones after the last epoch are never reached: the learning rate would never decay there.

    A milestone m decays the rate after m epochs, so it acts from epoch m + 1 on; m = epochs
    (the usual way to write "no decay" in a short run, as `[]` also does) is allowed.
    """
    problems = []
    for section in TRAINING_SECTIONS:
        values = config.get(section) or {}
        epochs, milestones = values.get("epochs"), values.get("milestones") or []
        late = [m for m in milestones if m > epochs]
        if late:
            problems.append(
                f"{section}.milestones = {list(milestones)} has milestone(s) {late} beyond "
                f"{section}.epochs = {epochs}: the learning rate would never be decayed there; "
                f"use milestones <= {epochs} (or [] for no decay), or raise {section}.epochs"
            )
    return problems


# --------------------------------------------------------------------------- quantizers

# Quantizers on power-of-two levels: one bit goes to zero, so they take 2..8 bits; INQ needs a
# quantized layer to run on (at 32 bits there is none).
POW2_QUANTIZERS = {"pow2": range(2, 9), "inq": range(2, 9)}


def portions_problem(portions: Any) -> str | None:
    """INQ's accumulated portions must increase strictly within (0, 1] and end at 1."""
    values = list(portions or [])
    if values and values[-1] == 1 and all(0 < v <= 1 for v in values) and all(a < b for a, b in zip(values, values[1:])):
        return None
    return (f"quantizers.inq.portions = {values} must increase strictly within (0, 1] and end at 1, "
            "e.g. [0.5, 0.75, 0.875, 1] (the paper's 5-bit setting)")


def quantizer_problems(config: Mapping[str, Any]) -> list[str]:
    """Bit widths a grid quantizer cannot take, and INQ's settings a schema cannot check."""
    problems = []
    grid = config.get("grid") or {}
    blocks = config.get("quantizers") or {}
    for value in grid.get("quantizer") or []:
        name = base_quantizer(value)  # without its coreset suffix
        if name != value and value not in blocks:
            block = "<a copy of quantizers.inq>" if name == "inq" else "{}"
            problems.append(f"grid.quantizer {value} needs its own settings block, as every grid quantizer has: add "
                            f"`{value}: {block}` under `quantizers:` (DVC tracks a cell's quantizer settings as "
                            f"quantizers.<grid value>; with `dvc exp run`: -S '++quantizers={{{value}: {block}}}')")
        allowed = POW2_QUANTIZERS.get(name)
        if allowed is None:
            continue
        widths = [("qat8.weight_bits", (config.get("qat8") or {}).get("weight_bits"))]
        widths += [(f"grid.bits {b}", int(str(b)[1:].split("a")[0])) for b in grid.get("bits") or []]
        bad = [f"{where} = {bits}" for where, bits in widths if bits is not None and bits not in allowed
               and not (name == "pow2" and bits == 32)]
        if bad:
            problems.append(f"grid.quantizer {name} puts weights on power-of-two levels, which take 2 to 8 bits "
                            f"(one for zero){'' if name == 'inq' else ' or 32'}; not {', '.join(bad)}")
    # INQ's own block and those of its coreset values (inq+acs10)
    for key in [k for k in blocks if k == "inq" or str(k).startswith("inq+")]:
        inq = blocks.get(key) or {}
        if "portions" in inq:
            problem = portions_problem(inq["portions"])
            if problem:
                problems.append(problem.replace("quantizers.inq.", f"quantizers.{key}.", 1))
        late = [m for m in inq.get("milestones") or [] if m > inq.get("epochs_per_phase", m)]
        if late:
            problems.append(f"quantizers.{key}.milestones = {inq['milestones']} has milestone(s) {late} beyond "
                            f"quantizers.{key}.epochs_per_phase = {inq['epochs_per_phase']}: the learning rate would "
                            "never be decayed there")
    return problems


# --------------------------------------------------------------------------- self-supervised pretraining


def ssl_problems(config: Mapping[str, Any]) -> list[str]:
    """Ranges written [low, high] the wrong way round, and a self-supervised start of the FP32
    model on several processes (the SSL step runs in one process only)."""
    problems = []
    for name, block in ((config.get("ssl") or {}).get("methods") or {}).items():
        for key, value in [*((k, block.get(k)) for k in ("weight_bits", "act_bits")),
                           ("views.crop", (block.get("views") or {}).get("crop"))]:
            if isinstance(value, list) and len(value) == 2 and value[0] > value[1]:
                problems.append(f"ssl.methods.{name}.{key} = {value} must be [low, high] with low <= high")
    init = (config.get("pretrain") or {}).get("init", "scratch")
    if init != "scratch" and (config.get("train") or {}).get("nproc", 1) > 1:
        problems.append(f"pretrain.init = {init} trains its self-supervised start in one process: "
                        "set train.nproc = 1 (or pretrain.init = scratch)")
    return problems


# --------------------------------------------------------------------------- the split


def split_sizes(num_classes: int, num_tasks: int, diminish_rate: float) -> tuple[int, int]:
    """(n_task, step) of SPEC 1: n_task = floor(C / (1 + γ (T − 1))), step = floor(n_task · γ)."""
    n_task = math.floor(num_classes / (1 + diminish_rate * (num_tasks - 1)))
    return n_task, math.floor(n_task * diminish_rate)


def _moves(num_classes: int, num_tasks: int, diminish_rate: float) -> bool:
    n_task, step = split_sizes(num_classes, num_tasks, diminish_rate)
    return num_tasks == 1 or (n_task >= 1 and step >= 1)


def smallest_moving_rate(num_classes: int, num_tasks: int) -> float | None:
    """The smallest γ, with two decimals (else three), that moves T tasks of C classes; None if none."""
    for scale in (100, 1000):
        for k in range(1, scale):
            if _moves(num_classes, num_tasks, k / scale):
                return k / scale
    return None


def largest_moving_tasks(num_classes: int, diminish_rate: float) -> int | None:
    """The largest T > 1 whose tasks move at this γ (step only shrinks as T grows); None if none."""
    for num_tasks in range(num_classes, 1, -1):
        if _moves(num_classes, num_tasks, diminish_rate):
            return num_tasks
    return None


def split_problem(num_classes: int, num_tasks: int, diminish_rate: float) -> str | None:
    """Why T tasks at γ over C classes do not move (step 0: consecutive tasks are the same), or None.

    Assumes the ranges are valid (T >= 1, 0 <= γ < 1): `lq.tasks.check_split_params` and the
    schema check those first.
    """
    # With γ < 1, n_task = floor(C / (1 + γ(T − 1))) >= floor(C / T), so C >= T is exactly the
    # condition for every task to get at least one class.
    if num_classes < num_tasks:
        return (
            f"split.num_tasks = {num_tasks} is more than the {num_classes} classes of the data, "
            f"which leaves fewer than one class per task; use at most {num_classes} tasks"
        )
    if _moves(num_classes, num_tasks, diminish_rate):
        return None
    n_task, step = split_sizes(num_classes, num_tasks, diminish_rate)
    same = "every task is the same" if n_task >= num_classes else f"tasks 0..{num_tasks - 2} are identical"
    rate, tasks = smallest_moving_rate(num_classes, num_tasks), largest_moving_tasks(num_classes, diminish_rate)
    works = [
        f"the smallest split.diminish_rate that moves {num_tasks} tasks is {rate:g}" if rate is not None
        else f"no split.diminish_rate in [0, 1) moves {num_tasks} tasks",
        f"at diminish_rate {diminish_rate:g} use at most {tasks} tasks" if tasks is not None
        else f"at diminish_rate {diminish_rate:g} only num_tasks = 1 works",
    ]
    return (
        f"split.num_tasks = {num_tasks} with split.diminish_rate = {diminish_rate:g} gives tasks that do "
        f"not move on {num_classes} classes: n_task = floor({num_classes} / (1 + {diminish_rate:g}·"
        f"{num_tasks - 1})) = {n_task} and step = floor({n_task}·{diminish_rate:g}) = {step}, so {same}. "
        f"For {num_classes} classes: {'; '.join(works)}"
    )


# --------------------------------------------------------------------------- the source's images


def source_problems(config: Mapping[str, Any]) -> list[str]:
    """Split and image-size problems, for a source whose classes and image size are known up front."""
    data = config.get("data") or {}
    source = data.get("source")
    if source in KNOWN_SOURCES:
        num_classes, size = KNOWN_SOURCES[source]
        where = f"data.source = {source}"
    elif source == "folder":
        num_classes, size, example = peek_folder(data.get("root", ""))
        where = f"data.source = folder ({example})"
    else:
        return []
    problems = []
    split = config.get("split") or {}
    if num_classes is not None:
        problem = split_problem(num_classes, split["num_tasks"], split["diminish_rate"])
        if problem:
            problems.append(f"{problem} ({where})")
    arch = (config.get("model") or {}).get("arch")
    if size is not None and arch in STRIDE2_STAGES:
        problem = image_size_problem(arch, *size)
        if problem:
            problems.append(f"{problem}; {where} has {size[1]}x{size[0]} (WxH) images")
    return problems


def last_feature_map(arch: str, height: int, width: int) -> tuple[int, int]:
    """The spatial size of `arch`'s last feature map for an input of height x width."""
    for _ in range(STRIDE2_STAGES[arch]):
        height, width = -(-height // 2), -(-width // 2)
    return height, width


def smallest_side(arch: str) -> int:
    """The smallest square image `arch` trains on with any batch size: 2^s + 1 for s stride-2 stages."""
    return 2 ** STRIDE2_STAGES[arch] + 1


def image_size_problem(arch: str, height: int, width: int) -> str | None:
    """Why `arch` cannot train on height x width images, or None.

    Each side must reach the last stride-2 stage (at least 2^s pixels, the models' own check),
    and the last feature map must hold more than one pixel: batch norm in training needs more
    than one value per channel, so a 1x1 map fails on any batch of one image (a last, short
    batch, or one process's share under DDP).
    """
    stages = STRIDE2_STAGES[arch]
    h, w = last_feature_map(arch, height, width)
    if min(height, width) >= 2**stages and h * w > 1:
        return None
    side = smallest_side(arch)
    return (
        f"model.arch = {arch!r} cannot train on {width}x{height} images: its {stages} stride-2 stages "
        f"leave a {w}x{h} feature map and batch norm cannot train on one pixel per channel (a batch of "
        f"one image); it needs images of at least {side}x{side} pixels (each side >= {2**stages})"
    )


def peek_folder(root: str | os.PathLike) -> tuple[int | None, tuple[int, int] | None, str]:
    """(class count, (height, width) of the first image, that image's path) of `<root>/train`.

    Reads one image header only. Anything unreadable gives None: the download stage reports
    folder problems with their own messages.
    """
    train = Path(root) / "train"
    try:
        classes = sorted(e for e in os.listdir(train) if not e.startswith(".") and (train / e).is_dir())
        first = next((train / c / f for c in classes for f in sorted(os.listdir(train / c))
                      if not f.startswith(".") and (train / c / f).is_file()), None)
    except OSError:
        return None, None, str(train)
    if first is None:
        return len(classes) or None, None, str(train)
    try:
        from PIL import Image

        with Image.open(first) as img:
            width, height = img.size
    except Exception:  # not an image: the download stage names the file and the reason
        return len(classes), None, str(first)
    return len(classes), (height, width), str(first)


# --------------------------------------------------------------------------- the device


def check_device(name: str) -> None:
    """Refuse `train.device` = cuda / cuda:N on a machine without (that many) CUDA devices.

    Run it on the machine that trains: the Snakefile does when it runs jobs itself (local
    execution, see workflow/rules/common.smk), every step under `dvc repro` (all stages run
    on the machine that starts it), and every step that uses the device. On a cluster the
    submitting machine may have no GPU while the training jobs do, so it is not checked there.
    """
    if not name.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise LqError(f"train.device = {name!r} but this machine has no CUDA device; use 'auto' or 'cpu'")
    _, _, index = name.partition(":")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise LqError(
            f"train.device = {name!r} but this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1}); "
            "use one of those, 'cuda' or 'auto'"
        )


# --------------------------------------------------------------------------- the folder tree


def describe_odd_entry(path: Path) -> str | None:
    """'a symbolic link loop' / 'a broken symbolic link to X' / None, for folder-source messages."""
    if not path.is_symlink():
        return None
    try:
        target = path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop this way
        return f"a symbolic link loop ({path} -> {os.readlink(path)} leads back to itself)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"a symbolic link loop ({path} -> {os.readlink(path)} leads back to itself)"
        return f"a broken symbolic link (to {os.readlink(path)}, which does not exist)"
    if target.is_dir() and (path.parent.resolve() == target or target in path.parent.resolve().parents):
        return f"a symbolic link loop ({path} -> {os.readlink(path)} points back to {target}, a folder holding it)"
    return None
