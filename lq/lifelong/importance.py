"""Diagonal parameter importance F for the quadratic penalty (SPEC §7).

Both functions are data-agnostic: they see only the ``batches`` the caller passes and nothing
else. The project's rule (SPEC §7, STYLE "what to avoid") is that the caller passes *replay* (or
training) batches of the earlier tasks, never test data; nothing here can reach a test split on
its own.

Both evaluate the model as they find it (the caller passes the model after task t-1), in eval
mode so that BatchNorm running statistics and dropout are left alone, and restore every module's
train/eval flag afterwards. Gradients are taken with ``torch.autograd.grad``, so the ``.grad``
fields of the parameters are never touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from lq.errors import LqError

Batch = Sequence[torch.Tensor]


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode; give each one back its own flag on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


def _select(model: nn.Module, params: Iterable[str] | None) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters())
    if params is None:
        return {n: p for n, p in named.items() if p.requires_grad}
    chosen = {}
    for n in params:
        if n not in named:
            raise LqError(f"importance requested for parameter {n!r}, which the model does not have")
        if not named[n].requires_grad:
            raise LqError(f"parameter {n!r} does not require grad, so it has no importance")
        chosen[n] = named[n]
    return chosen


def _to(t, device):
    return t.to(device, non_blocking=True) if isinstance(t, torch.Tensor) and device is not None else t


def _accumulate_squared_grads(
    named: Mapping[str, torch.Tensor],
    batches: Iterable[Batch],
    batch_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    model: nn.Module,
) -> dict[str, torch.Tensor]:
    """Mean over batches of the squared gradient of ``batch_loss`` (one gradient per batch)."""
    names = list(named)
    tensors = [named[n] for n in names]
    acc = {n: torch.zeros_like(p, memory_format=torch.preserve_format).detach() for n, p in named.items()}
    device = tensors[0].device if tensors else None
    count = 0
    with _eval_mode(model):
        for batch in batches:
            x, y = _to(batch[0], device), _to(batch[1], device)
            loss = batch_loss(x, y)
            count += 1
            if not tensors or not loss.requires_grad:
                continue
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            for n, g in zip(names, grads):
                if g is not None:
                    acc[n].addcmul_(g, g)
    if count == 0:
        raise LqError("importance needs at least one batch of replay/training data; got none")
    return {n: a.div_(count) for n, a in acc.items()}


def squared_grad_importance(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batches: Iterable[Batch],
    *,
    params: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """EWC-style importance ``F_i = mean over batches of (∂L/∂θ_i)²`` at the current parameters.

    ``loss_fn(logits, targets)`` is the batch loss (LifeQuant: the BaLL loss); ``batches`` yields
    ``(x, y)``: replay data of tasks 0..t-1 (never test data: see the module docstring). One
    gradient per batch, squared, then averaged over batches, as in the reference. ``params``
    restricts the result to those parameter names (default: every parameter that requires grad).
    """
    named = _select(model, params)
    return _accumulate_squared_grads(named, batches, lambda x, y: loss_fn(model(x), y), model)


def noise_amplitude(act_range: float, bits: int) -> float:
    """Width of one k-bit step over a range r: ``r / (2^k − 1)`` (0 for 32 bits: no quantization)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 32:
        raise LqError(f"bit width must be an integer in 1..32, got {bits!r}")
    if bits == 32:
        return 0.0
    return float(act_range) / (2**bits - 1)


def uniform_noise(
    shape: Sequence[int],
    amplitude: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Uniform noise in ``[−amplitude, amplitude)``: the reference's ``(rand·2 − 1)·amplitude``.

    Drawn on the generator's device (so a seeded generator gives the same numbers wherever the
    result goes), then moved to ``device``. Pass a generator on the target device to avoid a copy.
    """
    draw_device = generator.device if generator is not None else device
    u = torch.rand(tuple(shape), generator=generator, device=draw_device, dtype=dtype or torch.float32)
    noise = (u * 2 - 1) * amplitude
    return noise if device is None else noise.to(device)


def quant_noise_term(
    model: nn.Module,
    features: torch.Tensor,
    logits: torch.Tensor,
    *,
    amplitude: float,
    draws: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The reference's quantization-noise loss on one batch (SPEC §7, MobileNetV2 reference).

    ``draws`` noisy copies of the features before the classifier, ``h + ε`` with ε uniform in
    ``[−a, a]`` (a = ``amplitude``, one quantization step r / (2^k − 1)), go through
    ``model.head``; each is compared with the clean prediction as
    ``−log mean_{batch, classes}(log p_noisy · log p_clean)``, and the term is the mean over the
    draws. Both paths keep their gradient, as in the reference. Without noise it is not zero
    (``−log mean (log p)²``): it is the reference's comparison, kept as written.
    """
    noise = uniform_noise((draws, *features.shape), amplitude, generator=generator,
                          device=features.device, dtype=features.dtype)
    noisy = F.log_softmax(model.head(features.unsqueeze(0) + noise), dim=-1)  # (draws, B, C)
    clean = F.log_softmax(logits, dim=-1)
    return -torch.log((noisy * clean.unsqueeze(0)).mean(dim=(1, 2))).mean()


def quant_noise_importance(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batches: Iterable[Batch],
    *,
    amplitude: float,
    draws: int = 100,
    weight: float = 1.0,
    generator: torch.Generator | None = None,
    params: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Importance with the quantization-noise term, as the reference computes it (SPEC §7).

    ``F_i = mean over batches of (∂/∂θ_i [loss_fn(f(x), y) + weight · N(x)])²`` with N the noise
    term of ``quant_noise_term``: the term joins the task loss *before* the gradient is squared,
    so it moves F through the cross term with the task loss's gradient. The reference weights it
    by 1 / (number of replay batches) (pass that as ``weight``). Squaring the term's gradient on
    its own instead (an earlier lq version) left F unchanged to about 1e-6 relative: inert.

    The model needs ``forward_features(x)`` and a ``head`` module (forward = head(features)).
    Deterministic for a seeded ``generator``; labels feed only ``loss_fn``.
    """
    if not float(amplitude) >= 0.0:
        raise LqError(f"noise amplitude must be >= 0, got {amplitude!r}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise LqError(f"draws must be a positive integer, got {draws!r}")
    if not hasattr(model, "forward_features") or not isinstance(getattr(model, "head", None), nn.Module):
        raise LqError("quant-noise importance needs a model with forward_features(x) and a `head` module")
    named = _select(model, params)

    def batch_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        features = model.forward_features(x)  # (B, D)
        logits = model.head(features)
        term = quant_noise_term(model, features, logits, amplitude=amplitude, draws=draws, generator=generator)
        return loss_fn(logits, y) + weight * term

    return _accumulate_squared_grads(named, batches, batch_loss, model)


def combine(*importances: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum importance dicts name by name (union of names); the inputs are left untouched."""
    if not importances:
        raise LqError("combine needs at least one importance dict")
    out: dict[str, torch.Tensor] = {}
    for imp in importances:
        for n, v in imp.items():
            if n not in out:
                out[n] = v.detach().clone()
                continue
            if out[n].shape != v.shape:
                raise LqError(
                    f"cannot combine importances of {n!r}: shapes {tuple(out[n].shape)} and {tuple(v.shape)}"
                )
            out[n] = out[n] + v.detach().to(out[n].device)
    return out
