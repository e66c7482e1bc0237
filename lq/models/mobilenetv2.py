"""MobileNetV2 for small images (the paper's second architecture), written once in float.

The layer table is the ImageNet one (Sandler et al. 2018); as in the usual CIFAR adaptations
(e.g. kuangliu/pytorch-cifar) the stem and the first strided bottleneck stage (24 channels)
use stride 1, leaving three stride-2 stages: 32x32 ends at 4x4 and 8x8 at 1x1.
An `ActQuantPoint` follows every BN whose output the quantized model feeds on: after BN and
before ReLU6, and after the projection BN that forms the block's output (before the residual
add, mirroring the ResNet blocks). Convolutions, depthwise ones included, are plain
`nn.Conv2d` for the converter to swap; `head` stays a float `nn.Linear`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import torch
from torch import nn

from lq.errors import LqError
from lq.models.registry import build_model, check_dims, register_model
from lq.quant.points import ActQuantPoint, ConvBNQAct

LayerFn = Callable[..., nn.Module]

# (expand ratio t, output channels c, repeats n, first stride s); CIFAR strides.
_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 on ImageNet
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor`, never dropping more than 10% (as torchvision)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def conv_bn_act(
    in_chs: int,
    out_chs: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    norm_layer: LayerFn = nn.BatchNorm2d,
    act_layer: LayerFn | None = nn.ReLU6,
) -> ConvBNQAct:
    """conv-BN-q(-act); `act_layer=None` gives the linear bottleneck output (still quantized)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv2d(
            in_chs, out_chs, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False
        ),
        bn=norm_layer(out_chs),
        aq=ActQuantPoint(),
    )
    if act_layer is not None:
        layers["act"] = act_layer()
    return ConvBNQAct(layers)


class InvertedResidual(nn.Module):
    """Expand (1x1) - depthwise (3x3) - project (1x1, linear); residual when shapes match."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int,
        expand_ratio: int,
        norm_layer: LayerFn = nn.BatchNorm2d,
        act_layer: LayerFn = nn.ReLU6,
    ) -> None:
        super().__init__()
        hidden = int(round(in_chs * expand_ratio))
        self.use_res = stride == 1 and in_chs == out_chs
        self.conv_pw: nn.Module = (
            conv_bn_act(in_chs, hidden, 1, norm_layer=norm_layer, act_layer=act_layer)
            if expand_ratio != 1
            else nn.Identity()
        )
        self.conv_dw = conv_bn_act(
            hidden, hidden, 3, stride, groups=hidden, norm_layer=norm_layer, act_layer=act_layer
        )
        self.conv_pwl = conv_bn_act(hidden, out_chs, 1, norm_layer=norm_layer, act_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_pwl(self.conv_dw(self.conv_pw(x)))
        return x + out if self.use_res else out


class MobileNetV2(nn.Module):
    """MobileNetV2 with a width multiplier, CIFAR strides and a float classifier `head`."""

    def __init__(
        self,
        num_classes: int = 100,
        in_channels: int = 3,
        image_size: int | tuple[int, int] = 32,
        width_mult: float = 1.0,
        norm_layer: LayerFn = nn.BatchNorm2d,
        act_layer: LayerFn = nn.ReLU6,
    ) -> None:
        super().__init__()
        num_strided = sum(1 for *_, s in _CFG if s == 2)
        self.image_size = check_dims(
            "mobilenetv2",
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
            min_size=2**num_strided,
        )
        is_number = isinstance(width_mult, (int, float)) and not isinstance(width_mult, bool)
        if not is_number or width_mult <= 0:
            raise LqError(f"mobilenetv2: width_mult must be a number > 0, got {width_mult!r}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.width_mult = float(width_mult)

        in_chs = make_divisible(32 * width_mult)
        self.stem = conv_bn_act(
            in_channels, in_chs, 3, stride=1, norm_layer=norm_layer, act_layer=act_layer
        )
        blocks: list[nn.Module] = []
        for t, c, n, s in _CFG:
            out_chs = make_divisible(c * width_mult)
            for i in range(n):
                blocks.append(
                    InvertedResidual(in_chs, out_chs, s if i == 0 else 1, t, norm_layer, act_layer)
                )
                in_chs = out_chs
        self.blocks = nn.Sequential(*blocks)
        # As in the paper, the last conv keeps 1280 channels when the network is thinned.
        self.num_features = make_divisible(1280 * max(1.0, width_mult))
        self.conv_head = conv_bn_act(
            in_chs, self.num_features, 1, norm_layer=norm_layer, act_layer=act_layer
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(self.num_features, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's MobileNetV2 initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, num_features) fed to the classifier."""
        x = self.conv_head(self.blocks(self.stem(x)))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


@register_model
def mobilenetv2(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2, CIFAR strides; `width_mult` scales every layer but the 1280-wide last conv."""
    return build_model(MobileNetV2, "mobilenetv2", **kwargs)
