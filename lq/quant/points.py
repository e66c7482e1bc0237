"""Where activation quantizers go in a float model.

Models are written once, in float. They mark each place the reference quantizes an activation
with an `ActQuantPoint` (an identity in float), and `lq.quant.convert.quantize_model` swaps every
marker for a k-bit activation quantizer, so no model class names a bit width.
"""

import torch
from torch import Tensor, nn


class ActQuantPoint(nn.Identity):
    """Identity placeholder replaced by an activation quantizer on conversion."""


def activation_after(point: nn.Module, act: nn.Module, x: Tensor) -> Tensor:
    """act(point(x)): an activation after a quantization point.

    A quantizer with a fused `then_relu` (the k-bit grid) followed by a ReLU or ReLU6 computes
    both in one node: on the grid's values in [0, 1] either is the identity, and its gradient
    mask joins the quantizer's. The result is bit for bit the two modules'; anything else (a
    float marker, another quantizer or activation) runs the two modules, and so does a model
    under `torch.compile`, whose compiler fuses the two itself.
    """
    fuse = getattr(point, "then_relu", None)
    fusable = fuse is not None and type(act) in (nn.ReLU, nn.ReLU6) and not torch.compiler.is_compiling()
    fused = fuse(x) if fusable else None
    return act(point(x)) if fused is None else fused


class ConvBNQAct(nn.Sequential):
    """conv, bn, aq and an optional act, named so; its forward fuses aq and act (`activation_after`)."""

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return activation_after(self.aq, self.act, x) if "act" in self._modules else self.aq(x)
