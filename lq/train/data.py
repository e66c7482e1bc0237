"""The in-memory data path: the whole split as a uint8 tensor on the training device.

The store is read once; a task's table (`image,label` CSV) selects rows by image id. Batches are
cut from one `randperm`, augmented as whole-batch tensor ops (random crop with zero padding,
optional horizontal flip) and normalised on the device: no per-sample Python in the hot loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lq.data.store import read_store
from lq.errors import LqError


@dataclass(frozen=True)
class ImageBank:
    """All images of the store (N, C, H, W uint8, on the device), addressable by image id."""

    images: torch.Tensor
    labels: torch.Tensor
    row_of: dict[str, int]
    classes: tuple[str, ...]
    mean: torch.Tensor  # per channel, from the training split only
    std: torch.Tensor
    targets: torch.Tensor | None = None  # training labels when some are flipped (data.label_noise)

    @property
    def training_labels(self) -> torch.Tensor:
        """The labels training sees: `labels`, or the noisy copy `with_label_noise` made."""
        return self.labels if self.targets is None else self.targets

    def flipped(self, rows: torch.Tensor) -> torch.Tensor:
        """Which of `rows` carry a flipped training label."""
        return self.training_labels[rows] != self.labels[rows]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def rows(self, table: pd.DataFrame, source: str = "table") -> torch.Tensor:
        """Store rows of a table's image ids; an unknown id or a label mismatch is an error."""
        try:
            rows = np.fromiter((self.row_of[i] for i in table["image"]), dtype=np.int64, count=len(table))
        except KeyError as exc:
            raise LqError(f"{source}: image {exc.args[0]!r} is not in the data store") from None
        index = torch.from_numpy(rows).to(self.images.device)
        labels = torch.as_tensor(table["label"].to_numpy(dtype=np.int64, copy=True), device=self.images.device)
        if not torch.equal(self.labels[index], labels):
            raise LqError(f"{source}: labels disagree with the data store for some images")
        return index


def load_bank(store_dir: Path, device: torch.device) -> ImageBank:
    """Read the store once and move it to the device."""
    store = read_store(Path(store_dir))
    images = torch.tensor(store.images).permute(0, 3, 1, 2).contiguous()
    train = torch.from_numpy(np.char.startswith(store.ids.astype(str), "train/"))
    pixels = images[train].float().div_(255)
    mean = pixels.mean(dim=(0, 2, 3))
    std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return ImageBank(
        images=images.to(device),
        labels=torch.from_numpy(store.labels.astype(np.int64)).to(device),
        row_of={str(i): r for r, i in enumerate(store.ids)},
        classes=tuple(store.classes),
        mean=mean.to(device),
        std=std.to(device),
    )


def noisy_labels(labels: np.ndarray, train: np.ndarray, num_classes: int, share: float, seed: int) -> np.ndarray:
    """Labels with round(share * n_train) training rows flipped to another class (SPEC 10's noise).

    The rows (uniform, without replacement, among the training rows only: test labels are never
    touched) and each new label (uniform over the other classes) come from NumPy's generator seeded
    by (seed, share as a rational): the same noisy data set for every stage, method and seed.
    """
    noisy = labels.copy()
    candidates = np.flatnonzero(train)
    count = int(round(share * len(candidates)))
    if count == 0 or num_classes < 2:
        return noisy
    rng = np.random.default_rng([seed, *float(share).as_integer_ratio(), 1303])
    chosen = np.sort(rng.choice(candidates, size=count, replace=False))
    shift = rng.integers(1, num_classes, size=count)  # never 0: the label always changes
    noisy[chosen] = (labels[chosen] + shift) % num_classes
    return noisy


def with_label_noise(bank: ImageBank, share: float, seed: int, train: np.ndarray) -> ImageBank:
    if share <= 0:
        return bank
    labels = bank.labels.cpu().numpy()
    noisy = noisy_labels(labels, train, len(bank.classes), share, seed)
    return dataclasses.replace(bank, targets=torch.from_numpy(noisy).to(bank.labels.device))


def train_rows(bank_ids: Sequence[str]) -> np.ndarray:
    return np.char.startswith(np.asarray(bank_ids, dtype=str), "train/")


@dataclass(frozen=True)
class Augment:
    """Random crop with `pad` zero pixels on each side, and an optional horizontal flip."""

    pad: int
    hflip: bool

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        if self.pad > 0:
            # Per-sample offsets, applied as one slice copy per offset value (2·pad + 1 of them per
            # axis) rather than a gather over every pixel: far cheaper on CPU and GPU alike.
            padded = torch.nn.functional.pad(x, (self.pad,) * 4)
            dy = torch.randint(0, 2 * self.pad + 1, (b,), generator=generator).to(x.device)
            dx = torch.randint(0, 2 * self.pad + 1, (b,), generator=generator).to(x.device)
            rows = torch.empty_like(padded[:, :, :h, :])
            for shift in range(2 * self.pad + 1):
                pick = dy == shift
                rows[pick] = padded[pick, :, shift : shift + h, :]
            x = torch.empty_like(x)
            for shift in range(2 * self.pad + 1):
                pick = dx == shift
                x[pick] = rows[pick, :, :, shift : shift + w]
        if self.hflip:
            flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
            x[flip] = x[flip].flip(3)
        return x


class Batches:
    """Batches of (normalised images, labels) over a set of store rows.

    The shuffle and the augmentation draw from a CPU generator seeded per epoch, so an epoch's
    batches depend only on (seed, epoch): a resumed run sees the same batches as an
    uninterrupted one.
    """

    def __init__(self, bank: ImageBank, rows: torch.Tensor, batch_size: int, *, shuffle: bool,
                 augment: Augment | None = None, drop_last: bool = False):
        self.bank, self.rows, self.batch_size = bank, rows, batch_size
        self.shuffle, self.augment, self.drop_last = shuffle, augment, drop_last
        self._shift = (bank.mean * 255)[None, :, None, None]
        self._scale = (1 / (bank.std * 255))[None, :, None, None]

    def __len__(self) -> int:
        n = len(self.rows)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, seed: Sequence[int] | int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _, x, y in self.indexed_epoch(seed):
            yield x, y

    def indexed_epoch(self, seed: Sequence[int] | int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(store rows, images, labels) per batch; the rows let a loss draw further views."""
        generator = torch.Generator().manual_seed(_mix(seed))
        order = torch.randperm(len(self.rows), generator=generator) if self.shuffle else torch.arange(len(self.rows))
        order = order.to(self.rows.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = self.rows[order[start : start + self.batch_size]]
            yield index, self._prepare(index, generator), self.bank.training_labels[index]

    def view(self, index: torch.Tensor, seed: Sequence[int] | int) -> torch.Tensor:
        """Another augmented view of the images at `index`, from its own seeded generator."""
        return self._prepare(index, torch.Generator().manual_seed(_mix(seed)))

    def _prepare(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = self.bank.images[index].float()
        if self.augment is not None:
            x = self.augment(x, generator)  # zero padding: 0 is black in [0, 255] as in [0, 1]
        return x.sub_(self._shift).mul_(self._scale)  # (x / 255 - mean) / std, in place

    def __iter__(self):
        return self.epoch(0)


def _mix(seed: Sequence[int] | int) -> int:
    """One 63-bit seed from a tuple such as (train seed, task, epoch)."""
    parts = [seed] if isinstance(seed, int) else list(seed)
    return int(np.random.SeedSequence(parts).generate_state(1, dtype=np.uint64)[0] >> 1)
