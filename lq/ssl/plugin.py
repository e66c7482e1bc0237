"""The engine plugin of SimSiam and SSQL: a two-view loss, SSQL's bit draws, the collapse guard.

Each step takes the batch's view (`batch.x`) and a second view of the same images
(`batch.view(1)`, seeded by the step's position, so a resumed run sees the same views). SimSiam
runs the float network on both. SSQL (the release's `SSQL_SimSiam.forward`) first runs the float
network on both views while every activation point records its min and max, then draws one
weight bit width w and one activation bit width a for the whole step and runs the quantized
network on both views with those ranges; the loss puts both branches' predictions against the
float targets (`lq.ssl.loss`). The quantized branch runs in float32 even where the float branch
runs under bfloat16 autocast (a GPU), so its grids are exact.

The release draws the bits with Python's global `random`. Here they come from a generator of
their own, seeded by the run's seed, whose state is part of the plugin's state: the engine saves
it after every epoch, so a run resumed after a kill draws exactly the bits the uninterrupted run
would have. Every draw is kept (two bytes a step), so the timing record can show how often each
pair was drawn.

The collapse guard: SimSiam's failure mode is a constant embedding. After every epoch the plugin
computes the per-dimension std of the l2-normalised embeddings z of the epoch's float passes
(about 1/sqrt(d) when the embeddings spread over the sphere, 0 when they collapse), adds it to
the epoch's row (`embedding_std`, in the curve CSV and the log), and stops the stage with a clear
error when it falls below `collapse_std / sqrt(d)`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lq.errors import LqError
from lq.ssl import loss, model as ssl_model
from lq.train.plugin import Batch, Plugin, StepLoss, TaskContext

log = logging.getLogger("lq")
METHODS = ("simsiam", "ssql")


class BitDraws:
    """SSQL's per-step bit widths: w uniform in `weight_bits`, a in `act_bits` (inclusive ranges)."""

    def __init__(self, weight_bits: tuple[int, int] = (2, 8), act_bits: tuple[int, int] = (4, 8), seed: int = 0):
        self.weight_bits, self.act_bits = tuple(weight_bits), tuple(act_bits)
        mixed = int(np.random.SeedSequence([seed, 5517]).generate_state(1, dtype=np.uint64)[0] >> 1)
        self.generator = torch.Generator().manual_seed(mixed)
        self.drawn: list[tuple[int, int]] = []

    def draw(self) -> tuple[int, int]:
        (w_low, w_high), (a_low, a_high) = self.weight_bits, self.act_bits
        w = int(torch.randint(w_low, w_high + 1, (1,), generator=self.generator))
        a = int(torch.randint(a_low, a_high + 1, (1,), generator=self.generator))
        self.drawn.append((w, a))
        return w, a

    def counts(self) -> dict[str, int]:
        """How often each pair was drawn, 'w2a4' -> n, every pair of the ranges listed."""
        out = {f"w{w}a{a}": 0 for w in range(self.weight_bits[0], self.weight_bits[1] + 1)
               for a in range(self.act_bits[0], self.act_bits[1] + 1)}
        for w, a in self.drawn:
            out[f"w{w}a{a}"] += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(),
                "drawn": torch.tensor(self.drawn, dtype=torch.uint8).reshape(-1, 2)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.drawn = [(int(w), int(a)) for w, a in state["drawn"].tolist()]


class SslObjective(Plugin):
    """The loss of one self-supervised method on a `lq.ssl.model.Siamese` (switchable for SSQL)."""

    name = "ssl"

    def __init__(self, method: str, *, dim: int, collapse_std: float = 0.1, draws: BitDraws | None = None):
        if method not in METHODS:
            raise LqError(f"unknown self-supervised method '{method}'; allowed: {', '.join(METHODS)}")
        if method == "ssql" and draws is None:
            raise ValueError("SSQL needs its bit draws")
        self.method, self.dim, self.collapse_std, self.draws = method, dim, collapse_std, draws
        self.model: nn.Module | None = None
        self._sum = self._squares = None
        self._count = 0

    def before_task(self, ctx: TaskContext) -> None:
        self.model = ctx.model

    def before_epoch(self, ctx: TaskContext, epoch: int, rows: torch.Tensor) -> None:
        self._sum = self._squares = None
        self._count = 0
        return None

    def loss(self, batch: Batch, forward: Callable[[torch.Tensor], Any]) -> StepLoss:
        x1, x2 = batch.x, batch.view(1)
        if self.method == "simsiam":
            (z1, p1), (z2, p2) = forward(x1), forward(x2)
            self._record(z1, z2)
            return StepLoss(loss.simsiam(p1, p2, z1, z2), None)
        ssl_model.observe(self.model)
        (z1, p1), (z2, p2) = forward(x1), forward(x2)
        self._record(z1, z2)
        ssl_model.quantize(self.model, *self.draws.draw())
        try:
            with torch.autocast(x1.device.type, enabled=False):
                (_, p1_q), (_, p2_q) = forward(x1.float()), forward(x2.float())
        finally:
            ssl_model.to_float(self.model)
        return StepLoss(loss.ssql(p1, p2, p1_q.float(), p2_q.float(), z1.float(), z2.float()), None)

    def _record(self, *embeddings: torch.Tensor) -> None:
        with torch.no_grad():
            z = F.normalize(torch.cat(embeddings).double(), dim=1)
            if self._sum is None:
                self._sum, self._squares = torch.zeros_like(z[0]), torch.zeros_like(z[0])
            self._sum += z.sum(0)
            self._squares += (z * z).sum(0)
            self._count += len(z)

    def embedding_std(self) -> float:
        """The mean over dimensions of the per-dimension std of the epoch's normalised embeddings."""
        if not self._count:
            return float("nan")
        mean = self._sum / self._count
        return float((self._squares / self._count - mean * mean).clamp_min(0).sqrt().mean())

    def after_epoch(self, ctx: TaskContext, row: dict[str, Any]) -> None:
        std = self.embedding_std()
        row["embedding_std"] = round(std, 6)
        spread = 1 / math.sqrt(self.dim)
        log.info("epoch %d: per-dimension std of the normalised embedding %.4f (%.2f of 1/sqrt(%d), the spread "
                 "of embeddings over the sphere)", row["epoch"], std, std / spread, self.dim)
        if self.collapse_std > 0 and not std >= self.collapse_std * spread:
            raise LqError(
                f"{self.method} collapsed in epoch {row['epoch']}: the per-dimension std of the normalised "
                f"embedding is {std:.2e}, below {self.collapse_std} x 1/sqrt({self.dim}) = "
                f"{self.collapse_std * spread:.2e} (every image maps to nearly the same embedding). Lower "
                f"ssl.methods.{self.method}.lr, strengthen the views (ssl.methods.{self.method}.views), or set "
                f"collapse_std: 0 to train on regardless")

    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.draws.state_dict()} if self.draws is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.draws is not None and state:
            self.draws.load_state_dict(state["draws"])
