"""CIFAR ResNets (depth 6n+2) as in the LifeQuant reference, written once in float.

Every place the reference quantizes an activation holds an `ActQuantPoint`; the shortcut
output and the post-add ReLU are left unquantized, as in the reference. Convolutions are
plain `nn.Conv2d` (the converter swaps them all, stem included, since the reference quantizes
the first conv) and the classifier `head` is a float `nn.Linear`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import torch
from torch import nn

from lq.errors import LqError
from lq.models.registry import build_model, check_dims, register_model
from lq.quant.points import ActQuantPoint, ConvBNQAct, activation_after

LayerFn = Callable[..., nn.Module]


class BasicBlock(nn.Module):
    """conv-BN-q-act-conv-BN-q, plus a shortcut (1x1 conv + BN when the shape changes), act."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        norm_layer: LayerFn = nn.BatchNorm2d,
        act_layer: LayerFn = nn.ReLU,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(out_chs)
        self.aq1 = ActQuantPoint()
        self.act1 = act_layer()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm_layer(out_chs)
        self.aq2 = ActQuantPoint()
        self.shortcut: nn.Module
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False),
                    bn=norm_layer(out_chs),
                )
            )
        else:
            self.shortcut = nn.Identity()
        self.act2 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = activation_after(self.aq1, self.act1, self.bn1(self.conv1(x)))
        out = self.aq2(self.bn2(self.conv2(out)))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-(6n+2) for small images: 16/32/64-channel stages of n BasicBlocks each.

    Any `image_size` >= 4 works: the two stride-2 stages halve it twice and the global
    average pool removes the spatial size, so the 8x8 digits (2x2 at stage 3) and 32x32
    CIFAR images share one definition.
    """

    widths = (16, 32, 64)

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 100,
        in_channels: int = 3,
        image_size: int | tuple[int, int] = 32,
        norm_layer: LayerFn = nn.BatchNorm2d,
        act_layer: LayerFn = nn.ReLU,
    ) -> None:
        super().__init__()
        name = f"resnet{depth}"
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise LqError(f"ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, ...), got {depth!r}")
        self.image_size = check_dims(
            name,
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
            min_size=2 ** (len(self.widths) - 1),
        )
        self.depth = depth
        self.num_classes = num_classes
        self.in_channels = in_channels
        blocks_per_stage = (depth - 2) // 6

        self.stem = ConvBNQAct(
            OrderedDict(
                conv=nn.Conv2d(in_channels, self.widths[0], 3, stride=1, padding=1, bias=False),
                bn=norm_layer(self.widths[0]),
                aq=ActQuantPoint(),
                act=act_layer(),
            )
        )
        in_chs = self.widths[0]
        for i, width in enumerate(self.widths):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_chs, width, stride, norm_layer, act_layer))
                in_chs = width
            # `layer1..3` as in the reference, so its parameter names map one to one.
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = in_chs
        self.head = nn.Linear(in_chs, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # The reference (akamaster's CIFAR ResNet) draws conv and linear weights from
        # kaiming_normal_ with its defaults; BN starts at identity.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, 64) fed to the classifier; lifelong methods perturb these."""
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _create_resnet(variant_depth: int, **kwargs: Any) -> ResNet:
    if "depth" in kwargs:
        raise LqError(
            f"resnet{variant_depth} fixes depth={variant_depth}; "
            "pick another registered resnet instead"
        )
    return build_model(ResNet, f"resnet{variant_depth}", depth=variant_depth, **kwargs)


@register_model
def resnet8(**kwargs: Any) -> ResNet:
    """ResNet-8 (1 block per stage): 2.6x faster steps than ResNet-20, for quick runs and tests."""
    return _create_resnet(8, **kwargs)


@register_model
def resnet20(**kwargs: Any) -> ResNet:
    """ResNet-20 (3 blocks per stage): the paper's main architecture."""
    return _create_resnet(20, **kwargs)


@register_model
def resnet32(**kwargs: Any) -> ResNet:
    """ResNet-32 (5 blocks per stage)."""
    return _create_resnet(32, **kwargs)


@register_model
def resnet56(**kwargs: Any) -> ResNet:
    """ResNet-56 (9 blocks per stage)."""
    return _create_resnet(56, **kwargs)
