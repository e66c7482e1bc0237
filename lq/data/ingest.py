"""From an image source to the store: the one call the `download` stage makes."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from lq.data.sources import load_source
from lq.data.store import write_store

log = logging.getLogger("lq")


def ingest(source: str, *, root: Path, seed: int, test_fraction: float, download: bool, out: Path) -> None:
    start = time.perf_counter()
    store = load_source(source, root=root, seed=seed, test_fraction=test_fraction, download=download)
    write_store(store, out)
    log.info("%s: %d images of shape %s in %d classes -> %s (%.1fs)", source, len(store.labels),
             tuple(store.images.shape[1:]), len(store.classes), out, time.perf_counter() - start)
