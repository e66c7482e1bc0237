"""Lifelong-learning math: BaLL loss, parameter importance and the quadratic penalty (SPEC §3, §7).

Pure functions (tensors in, tensors out); the methods that use them are plugins elsewhere.
"""

from lq.lifelong.ball import ball_logits, ball_loss, ball_weights
from lq.lifelong.importance import (
    combine,
    noise_amplitude,
    quant_noise_importance,
    quant_noise_term,
    squared_grad_importance,
    uniform_noise,
)
from lq.lifelong.penalty import quadratic_penalty, snapshot

__all__ = [
    "ball_logits",
    "ball_loss",
    "ball_weights",
    "combine",
    "noise_amplitude",
    "quadratic_penalty",
    "quant_noise_importance",
    "quant_noise_term",
    "snapshot",
    "squared_grad_importance",
    "uniform_noise",
]
