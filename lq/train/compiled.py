"""`train.compile`: torch.compile for a stage's full training batches, paid once per stage.

`train.compile: auto` compiles a phase when its training work, epochs x images x pixels per image,
reaches AUTO_COMPILE_PIXELS: below it, the one compilation costs more than the faster steps save.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


# The crossover measured on a 2-core CPU, one thread (README "Speed"): compiling a w4a4 ResNet-20
# costs 13 s with the workspace's warm Inductor cache, and a compiled step of 128 28x28 images
# saves 64 ms (468 vs 532 ms), 0.63 us per pixel-image; 13 s pays back at about 20 M pixel-images,
# and auto compiles a phase whose work pays it back twice.
AUTO_COMPILE_PIXELS = 40_000_000


def compiles(setting: bool | str, epochs: int, images: int, pixels: int) -> bool:
    """Whether a phase of `epochs` over `images` images of `pixels` pixels each compiles.

    `setting` is train.compile: true and false decide alone; `auto` compares the phase's work
    with AUTO_COMPILE_PIXELS (the digits default, 8x8 images, never reaches it).
    """
    if setting == "auto":
        return epochs * images * pixels >= AUTO_COMPILE_PIXELS
    return bool(setting)


class FullBatchCompile:
    """Run full training batches through `torch.compile(forward)` and every other call eagerly.

    A compiled graph is specialised to its input's shape and the module's mode. Each epoch's
    smaller last batch (of a different size in every task) and any eval-mode call would compile
    again: 40-50 s of CPU each for ResNet-20's forward and backward with a cold Inductor cache,
    which is what made a digits stage compile three times. Those few calls run eagerly instead, so
    a stage compiles once: the first training call fixes the shape, later phases and tasks of the
    same shape reuse Dynamo's cache. Compiled kernels round differently from eager ones, so this
    mode is not bit-identical to eager training (README, "Speed"). One process only: under
    torchrun a rank's slice of the last batch may have the full slice's size while another
    rank's is smaller, and the engine compiles every shape there.
    """

    def __init__(self, forward: Callable[..., Any], module: nn.Module, backend: str | Callable = "inductor"):
        self.eager, self.module = forward, module
        self.compiled = torch.compile(forward, dynamic=False, backend=backend)
        self.shape: torch.Size | None = None

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.module.training and torch.is_grad_enabled():
            self.shape = self.shape or x.shape
            if x.shape == self.shape:
                return self.compiled(x, *args, **kwargs)
        return self.eager(x, *args, **kwargs)
