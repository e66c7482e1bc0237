"""The shared half of every penalty method: task loss, importance, anchor, penalty and state.

LifeQuant, EWC, MAS, SI, RWalk and SCP all train on the same objective shape,

    L = task loss over the pool  +  λ Σ_i Ω_i (θ_i − θ*_i)²,

and differ only in how Ω (the importance) is computed. `QuadraticMethod` holds the rest once:

- the task loss: plain cross-entropy, or BaLL (`lq.lifelong.ball_loss` with the task's
  `TaskContext.class_weights`, form `ball_form`) when `balanced` is true, so BaLL is orthogonal
  to the penalty, as in LifeQuant;
- the penalty `lq.lifelong.quadratic_penalty(model, anchor, importance, λ)` (None while there is
  no importance or λ = 0);
- `state_dict`/`load_state_dict` over the attributes a subclass names in `state_keys` (tensors,
  dicts of tensors and primitives only, so checkpoints load with `weights_only=True`).

`ReplayImportanceMethod` adds the online bookkeeping of EWC, MAS and SCP: at the start of task
t ≥ 1 the importance of the task just finished, computed on its replay set at θ^{t−1}, is added
to the running sum, and the anchor becomes θ^{t−1}. `PathIntegralMethod` adds that of SI and
RWalk: the task loss's gradient before each optimizer step and the step actually taken.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lq.lifelong import ball_loss, combine, quadratic_penalty, snapshot
from lq.methods.base import Method, TaskContext

Batch = Sequence[torch.Tensor]
Importance = dict[str, torch.Tensor]


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters an optimizer moves (and so the ones an importance can be given to)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def zeros_like_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: torch.zeros_like(p).detach() for n, p in trainable(model).items()}


def _move(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    return value


class QuadraticMethod(Method):
    """Task loss (cross-entropy or BaLL) plus  λ Σ importance · (θ − anchor)²  (see module doc).

    Subclasses fill `importance` and `anchor` in their events and list any further state (running
    sums, counters) in `state_keys`. Training pool: the base `Method.pool`, train_t ∪ the replay
    sets of earlier tasks (train_t alone with `replay_in_pool: false`), the pool LifeQuant uses,
    so that methods differ only in their penalty.
    """

    state_keys: ClassVar[tuple[str, ...]] = ("importance", "anchor")

    def __init__(self, *, ll_lambda: float, balanced: bool, ball_form: str):
        self.lam, self.balanced, self.form = float(ll_lambda), bool(balanced), ball_form
        self.weights: torch.Tensor | None = None
        self.importance: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self._device: torch.device | None = None  # where the state tensors live (see `_place`)

    # --- the objective ---------------------------------------------------------------------------
    def criterion(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.balanced and self.weights is not None:
            return ball_loss(logits, targets, self.weights, form=self.form)
        return F.cross_entropy(logits, targets)

    def before_task(self, ctx: TaskContext) -> None:
        self.weights = ctx.class_weights
        self._place(ctx.model)

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        if not self.importance or self.lam == 0:
            return None
        self._place(model)
        return quadratic_penalty(model, self.anchor, self.importance, self.lam)

    def penalty_grad(self, name: str, param: torch.Tensor) -> torch.Tensor | None:
        """∂penalty/∂θ = 2λ Ω (θ − θ*) for one parameter (None where it has no penalty).

        Path-integral methods subtract it from `.grad` to recover the task loss's own gradient
        without a second backward pass.
        """
        if self.lam == 0 or name not in self.importance:
            return None
        return 2 * self.lam * self.importance[name] * (param.detach() - self.anchor[name])

    # --- state -----------------------------------------------------------------------------------
    def _place(self, model: nn.Module) -> None:
        """Move the state to the model's device once (checkpoints load onto the CPU)."""
        device = next(model.parameters()).device
        if device != self._device:
            for key in self.state_keys:
                setattr(self, key, _move(getattr(self, key), device))
            self._device = device

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.state_keys}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing, extra = set(self.state_keys) - set(state), set(state) - set(self.state_keys)
        if missing or extra:
            raise ValueError(f"{self.name} state needs keys {sorted(self.state_keys)}; "
                             f"missing {sorted(missing)}, unexpected {sorted(extra)}")
        for key in self.state_keys:
            value = state[key]
            setattr(self, key, dict(value) if isinstance(value, dict) else value)
        self._device = None  # unknown until the next `_place`


class ReplayImportanceMethod(QuadraticMethod):
    """Online importance from replay data: Ω = Σ_{k<t} Ω_k, Ω_k on replay_k at θ^k; anchor θ^{t−1}.

    At the start of task t the tasks not yet folded in (normally just t−1, whose parameters are
    the current ones) get their `task_importance`; `folded` counts them, so a second
    `before_task` of the same task adds nothing.
    """

    state_keys = ("importance", "anchor", "folded")
    uses_replay = True

    def __init__(self, *, ll_lambda: float, balanced: bool, ball_form: str):
        super().__init__(ll_lambda=ll_lambda, balanced=balanced, ball_form=ball_form)
        self.folded = 0

    def task_importance(self, model: nn.Module, batches: Iterable[Batch], task: int) -> Importance:
        """The importance of finished task `task` from its replay `batches`, at the current θ."""
        raise NotImplementedError

    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)
        if ctx.task == 0:
            self.importance, self.anchor, self.folded = {}, {}, 0
            return
        for k in range(self.folded, len(ctx.replay)):
            new = self.task_importance(ctx.model, ctx.replay[k].epoch(0), k)
            self.importance = combine(self.importance, new)
        self.folded = max(self.folded, len(ctx.replay))
        self.anchor = snapshot(ctx.model)


class PathIntegralMethod(QuadraticMethod):
    """Shared bookkeeping of SI and RWalk: the task gradient before a step and the step taken."""

    def __init__(self, *, ll_lambda: float, balanced: bool, ball_form: str):
        super().__init__(ll_lambda=ll_lambda, balanced=balanced, ball_form=ball_form)
        self._grad: dict[str, torch.Tensor] = {}   # task-loss gradient of the current step
        self._before: dict[str, torch.Tensor] = {}  # θ before the current step

    def task_grad(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """`.grad` minus the penalty's gradient: the gradient of the task loss alone."""
        grads = {}
        for n, p in trainable(model).items():
            if p.grad is None:
                continue
            g = p.grad.detach()
            pen = self.penalty_grad(n, p)
            grads[n] = g.clone() if pen is None else g - pen
        return grads

    def after_backward(self, model: nn.Module) -> None:
        self._place(model)
        self._grad = self.task_grad(model)
        params = trainable(model)
        self._before = {n: params[n].detach().clone() for n in self._grad}

    def after_step(self, model: nn.Module) -> None:
        params = trainable(model)
        for n, g in self._grad.items():
            self.step_taken(n, g, params[n].detach() - self._before[n])
        self._grad, self._before = {}, {}

    def step_taken(self, name: str, grad: torch.Tensor, delta: torch.Tensor) -> None:
        raise NotImplementedError
