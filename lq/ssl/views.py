"""Two augmented views of each image for self-supervised learning, as whole-batch tensor ops.

The release (SSQL-ECCV2022, `datasets.build_ssl_transform`) uses torchvision's per-image PIL
transforms on CIFAR: RandomResizedCrop(scale 0.2..1), ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8,
RandomGrayscale(p 0.2), horizontal flip (no blur on CIFAR). lq's data path keeps the store on the
device and augments a whole batch at once, so the views here are the same kinds of change written
as one affine resampling (`grid_sample`) plus per-image scalars:

- a random resized crop: area share in `crop`, aspect ratio in [3/4, 4/3] (square where that does
  not fit), anywhere in the image,
  with an optional rotation of up to `rotate` degrees (small rotations suit digits);
- a horizontal flip with probability 1/2 only when `hflip` (train.hflip: true for CIFAR; never
  for digits, whose meaning a flip changes);
- with probability 0.8, brightness and contrast (and, on colour images, saturation) factors drawn
  in [1 - jitter, 1 + jitter] (no hue change);
- a grey view with probability `grayscale` (colour images only);
- Gaussian noise of std `noise` times the pixel range.

Every draw comes from the generator passed in, so a view depends only on its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lq.ssl.settings import ViewSettings

PIXEL_RANGE = 255.0
JITTER_PROBABILITY = 0.8  # the release's RandomApply(ColorJitter, p=0.8)
ASPECT = (3 / 4, 4 / 3)   # torchvision's RandomResizedCrop default ratio range


@dataclass(frozen=True)
class Views:
    """`Batches`' augmentation for self-supervised training: (x in [0, 255], generator) -> a view."""

    settings: ViewSettings
    hflip: bool = False

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        s, b = self.settings, x.shape[0]

        def uniform(low: float, high: float) -> torch.Tensor:
            return (low + (high - low) * torch.rand(b, generator=generator, dtype=torch.float64)).float()

        area = uniform(*s.crop)
        aspect = torch.exp(uniform(math.log(ASPECT[0]), math.log(ASPECT[1])))
        sx, sy = torch.sqrt(area * aspect), torch.sqrt(area / aspect)  # the shares of width and height shown
        too_wide = (sx > 1) | (sy > 1)  # the crop does not fit: a square one of that area (torchvision falls back too)
        sx, sy = torch.where(too_wide, area.sqrt(), sx), torch.where(too_wide, area.sqrt(), sy)
        tx = (2 * torch.rand(b, generator=generator) - 1) * (1 - sx)
        ty = (2 * torch.rand(b, generator=generator) - 1) * (1 - sy)
        angle = torch.deg2rad(uniform(-s.rotate, s.rotate))
        flip = (torch.rand(b, generator=generator) < 0.5) if self.hflip else torch.zeros(b, dtype=torch.bool)
        sign = torch.where(flip, -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([sign * sx * cos, -sy * sin, tx], 1),
                             torch.stack([sign * sx * sin, sy * cos, ty], 1)], 1).to(x.device)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        jittered = (torch.rand(b, generator=generator) < JITTER_PROBABILITY).to(x.device)
        brightness = uniform(1 - s.jitter, 1 + s.jitter).to(x.device)
        contrast = uniform(1 - s.jitter, 1 + s.jitter).to(x.device)
        saturation = uniform(1 - s.jitter, 1 + s.jitter).to(x.device)
        grey_view = (torch.rand(b, generator=generator) < s.grayscale).to(x.device)
        noise = torch.randn(x.shape, generator=generator).to(x.device) * (s.noise * PIXEL_RANGE)

        one = torch.ones_like(brightness)
        factor = torch.where(jittered, brightness, one)[:, None, None, None]
        x = x * factor
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = mean + (x - mean) * torch.where(jittered, contrast, one)[:, None, None, None]
        if x.shape[1] == 3:
            grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
            x = grey + (x - grey) * torch.where(jittered, saturation, one)[:, None, None, None]
            x = torch.where(grey_view[:, None, None, None], grey.expand_as(x), x)
        return (x + noise).clamp_(0, PIXEL_RANGE)
