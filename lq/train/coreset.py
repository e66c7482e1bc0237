"""ACS: adaptive coreset selection for QAT, as a training-engine plugin (SPEC 10; Huang et al. 2023).

Every `every` epochs (R) the plugin scores the task's pool with the model being trained and keeps,
per class, the top round(f * n_c) samples (Python's `round`: halves go to the even integer, so
f * n_c = 2.5 keeps 2 and 3.5 keeps 4); the epochs until the next round train on that subset only
(`before_epoch` replaces the epoch's rows). Rounds fall on the epochs e with e % R == 0 of each
phase, epoch 0 included, as in the authors' release (`main.py`: a coreset is made before training
and again whenever `epoch % data_update_epochs == 0`).

Scores (`deepcore/methods/adptive_css.py` of the release; SPEC 10), with p_q the softmax of the model
being trained and p_f that of a fixed reference model:
- EVS, error vector score: ||p_q - onehot(y)||_2
- DS, disagreement score: ||p_q - p_f||_2
- ACS: beta(t) EVS + (1 - beta(t)) DS, t the epoch of the round, E the phase's epochs.

Both models run in eval mode (batch-norm running statistics, no dropout) on the un-augmented
images, in batches of `train.eval_batch_size` on the training device, with no gradient; scoring
draws no random numbers, so it leaves the training's random stream untouched. The selectors:

- `acs`, `evs`, `ds`: the top of the score per class (ties: the earlier pool row first);
- `random`: a uniform per-class sample of the same size, redrawn every round from a generator
  seeded by (seed, task, phase, epoch): the fair control;
- `full`: every sample (the plugin is then not installed at all).

The beta schedules (`schedule`): `paper` cos(pi t / 2E), the paper's and the default; `linear`
1 - t/E (the release's default, `--adaptive linear`), `cosine` (1 + cos(pi t / E)) / 2, `quadratic`
1 - (t/E)^2 and `sqrt` 1 - sqrt(t/E): the release's other `--adaptive` choices. The release writes
its coefficient as the weight of DS (alpha = t/E for `linear`); beta here is the weight of EVS, so
beta = 1 - alpha.

The plugin's state (the rows of the current round, the round's epoch and a log of every round) is
saved in the engine's checkpoint after every epoch, so a run killed inside a round resumes on the
same subset. The engine times `before_epoch` (the selection seconds) outside that state.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lq.errors import LqError
from lq.train.plugin import Plugin, TaskContext

SELECTORS = ("full", "random", "evs", "ds", "acs")
# Scored replay (lq.train.replay_selection) also offers the least-scored ACS share as a control.
REPLAY_SELECTORS = ("random", "acs", "evs", "ds", "acs_low")

SCHEDULES: dict[str, Callable[[float, float], float]] = {
    "paper": lambda t, e: math.cos(math.pi * t / (2 * e)),
    "linear": lambda t, e: 1 - t / e,
    "cosine": lambda t, e: 0.5 * (1 + math.cos(math.pi * t / e)),
    "quadratic": lambda t, e: 1 - (t / e) ** 2,
    "sqrt": lambda t, e: 1 - math.sqrt(t / e),
}


# --- the math -------------------------------------------------------------------------------------
def error_vector_score(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """EVS = ||p - onehot(y)||_2 per row of `probs` (N, C)."""
    return torch.linalg.vector_norm(probs - F.one_hot(labels, probs.shape[1]).to(probs.dtype), dim=1)


def disagreement_score(probs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """DS = ||p_q - p_f||_2 per row."""
    return torch.linalg.vector_norm(probs - reference, dim=1)


def beta(schedule: str, t: float, epochs: float) -> float:
    """The weight of EVS at epoch t of E (the rest goes to DS)."""
    if schedule not in SCHEDULES:
        raise LqError(f"coreset schedule '{schedule}' is unknown; allowed: {', '.join(SCHEDULES)}")
    return float(SCHEDULES[schedule](t, max(epochs, 1)))


def combined_score(evs: torch.Tensor, ds: torch.Tensor, selector: str, b: float) -> torch.Tensor:
    if selector == "evs":
        return evs
    if selector == "ds":
        return ds
    return b * evs + (1 - b) * ds


def class_budget(count: int, fraction: float) -> int:
    """round(f * n_c) with Python's rounding (half to even): 2.5 -> 2, 3.5 -> 4."""
    return int(round(fraction * count))


def top_per_class(scores: torch.Tensor, labels: torch.Tensor, fraction: float, lowest: bool = False) -> torch.Tensor:
    """Positions of the top (or, `lowest`, bottom) round(f * n_c) scores of each class, ascending.

    Ties go to the earlier position, so the choice does not depend on the sort's internals.
    """
    s, y = scores.detach().double().cpu().numpy(), labels.cpu().numpy()
    positions = np.arange(len(s))
    keep = []
    for c in np.unique(y):
        members = positions[y == c]
        key = s[members] if lowest else -s[members]
        order = members[np.lexsort((members, key))]
        keep.append(order[: class_budget(len(members), fraction)])
    chosen = np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(chosen.astype(np.int64))


def random_per_class(labels: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Positions of a uniform sample of round(f * n_c) of each class, ascending."""
    y = labels.cpu()
    keep = []
    for c in torch.unique(y).tolist():
        members = torch.nonzero(y == c).flatten()
        pick = torch.randperm(len(members), generator=generator)[: class_budget(len(members), fraction)]
        keep.append(members[pick])
    return torch.sort(torch.cat(keep)).values if keep else torch.zeros(0, dtype=torch.int64)


@torch.no_grad()
def probabilities(model: nn.Module, batches) -> torch.Tensor:
    """Softmax outputs of `model` in eval mode over `batches` (in order); its mode is restored."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([F.softmax(model(x).float(), dim=1) for x, _ in batches.epoch(0)])
    finally:
        model.train(was_training)


def parse_selector(value: str) -> tuple[str, float]:
    """'acs10' -> ('acs', 0.1); 'full' -> ('full', 1.0): the short form grid files use."""
    match = re.fullmatch(r"(random|evs|ds|acs)(\d{1,3})|full", value)
    if not match or (match.group(2) and not 0 < int(match.group(2)) <= 100):
        raise LqError(f"coreset '{value}' is not valid; expected full or one of random, evs, ds, acs followed by "
                      "a percentage in 1..100, e.g. acs10")
    return ("full", 1.0) if value == "full" else (match.group(1), int(match.group(2)) / 100)


# --- the plugin -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CoresetSettings:
    """`coreset` in params.yaml: which selector, the share f kept per class, R, the beta schedule."""

    selector: str = "full"
    fraction: float = 0.1
    every: int = 10
    schedule: str = "paper"

    def __post_init__(self) -> None:
        if self.selector not in SELECTORS:
            raise LqError(f"coreset.selector '{self.selector}' is unknown; allowed: {', '.join(SELECTORS)}")
        if not 0 < self.fraction <= 1:
            raise LqError(f"coreset.fraction must be in (0, 1], not {self.fraction}")
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise LqError(f"coreset.every must be an integer >= 1, not {self.every!r}")
        beta(self.schedule, 0, 1)

    @property
    def active(self) -> bool:
        return self.selector != "full"


class Coreset(Plugin):
    """Trains each epoch on the current round's per-class subset of the pool; see the module doc.

    `batches(rows)` makes un-augmented, unshuffled evaluation batches of store rows and
    `labels(rows)` their labels (the engine's image bank). `reference` is the fixed model DS
    compares with; None takes a frozen copy of the model each task starts from (the lifelong chain).
    `flipped(rows)` (optional) tells which rows carry a flipped label, for the round log.
    """

    name = "coreset"

    def __init__(self, settings: CoresetSettings, *, seed: int, batches: Callable[[torch.Tensor], Any],
                 labels: Callable[[torch.Tensor], torch.Tensor], reference: nn.Module | None = None,
                 flipped: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.settings, self.seed = settings, seed
        self._batches, self._labels, self._flipped = batches, labels, flipped
        self._fixed_reference = reference
        self.reference: nn.Module | None = reference
        self.task = 0
        self.phase = 0
        self.epochs = 1
        self.selected: torch.Tensor | None = None  # store rows of the current round
        self.round: tuple[int, int] | None = None  # (phase, epoch) of the current round
        self.rounds: list[dict[str, Any]] = []  # deterministic log: task, phase, epoch, size, flipped

    # --- events -----------------------------------------------------------------------------------
    def before_task(self, ctx: TaskContext) -> None:
        self.task = ctx.task
        if self._fixed_reference is None and self.settings.selector in ("ds", "acs"):
            self.reference = copy.deepcopy(ctx.model).eval()  # the model this task starts from
            for p in self.reference.parameters():
                p.requires_grad_(False)
        self.selected, self.round = None, None

    def before_phase(self, ctx, phase, index):
        self.phase, self.epochs = index, phase.schedule.epochs
        return None

    def before_epoch(self, ctx: TaskContext, epoch: int, rows: torch.Tensor) -> torch.Tensor:
        due = epoch % self.settings.every == 0
        if (due and self.round != (self.phase, epoch)) or self.selected is None:
            positions = self.select(ctx.model, rows, epoch)
            if len(positions) == 0:
                raise LqError(f"coreset.fraction = {self.settings.fraction} keeps no sample of task {self.task}: "
                              f"round(f * n_c) is 0 for every class of its {len(rows)} images; raise coreset.fraction")
            self.selected = rows[positions.to(rows.device)]
            self.round = (self.phase, epoch)
            flipped = int(self._flipped(self.selected).sum()) if self._flipped is not None else 0
            self.rounds.append({"task": self.task, "phase": self.phase, "epoch": epoch,
                                "selected": len(self.selected), "pool": len(rows), "flipped": flipped})
        self.selected = self.selected.to(rows.device)  # a restored state comes back on the CPU
        return self.selected

    # --- selection --------------------------------------------------------------------------------
    def select(self, model: nn.Module, rows: torch.Tensor, epoch: int) -> torch.Tensor:
        """Positions (into `rows`) this round keeps."""
        s, labels = self.settings, self._labels(rows)
        if s.selector == "random":
            generator = torch.Generator().manual_seed(
                int(np.random.SeedSequence([self.seed, self.task, self.phase, epoch]).generate_state(1)[0]))
            return random_per_class(labels, s.fraction, generator)
        scores = self.scores(model, rows, epoch)
        return top_per_class(scores, labels, s.fraction)

    def scores(self, model: nn.Module, rows: torch.Tensor, epoch: int) -> torch.Tensor:
        s, labels = self.settings, self._labels(rows)
        batches = self._batches(rows)
        probs = probabilities(model, batches)
        evs = error_vector_score(probs, labels)
        if s.selector == "evs":
            return evs
        ds = disagreement_score(probs, probabilities(self.reference, batches))
        return combined_score(evs, ds, s.selector, beta(s.schedule, epoch, self.epochs))

    # --- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"selected": None if self.selected is None else self.selected.cpu().clone(),
                "round": None if self.round is None else list(self.round),
                "rounds": [dict(r) for r in self.rounds]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        selected = state.get("selected")
        self.selected = None if selected is None else selected.clone()
        self.round = None if state.get("round") is None else tuple(state["round"])
        self.rounds = [dict(r) for r in state.get("rounds", [])]
