"""The SimSiam and SSQL losses (SPEC 11), as in the release's `losses/criterions/CosineSimilarity.py`.

D(p, z) = -cos(p, stopgrad(z)), averaged over the batch. SimSiam: ½D(p1, z2) + ½D(p2, z1).
SSQL: ½·[½D(p1, z2) + ½D(p2, z1)] + ½·[½D(p1^q, z2) + ½D(p2^q, z1)]: both branches predict the
*float* targets z1, z2, which are detached; gradients reach the shared weights through the float
predictions and, straight-through, through the quantized ones.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """D(p, z) = -mean cos(p, stopgrad(z)); the target never gets a gradient."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def simsiam(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


def ssql(p1: Tensor, p2: Tensor, p1_q: Tensor, p2_q: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """Float term and quantized term, each against the float targets, averaged."""
    return 0.5 * simsiam(p1, p2, z1, z2) + 0.5 * simsiam(p1_q, p2_q, z1, z2)
