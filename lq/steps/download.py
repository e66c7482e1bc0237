"""Stage `download`: ingest the configured image source into the compact store."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from lq.data.sources import load_source
from lq.data.store import write_store
from lq.steps import load_stage_params, parser_for, run

log = logging.getLogger("lq")


def main(argv: list[str]) -> int:
    parser = parser_for("download", __doc__)
    parser.add_argument("--out", type=Path, required=True, help="store folder to write")
    args = parser.parse_args(argv)

    def body() -> None:
        params = load_stage_params("download", args)
        start = time.perf_counter()
        store = load_source(
            params["data.source"],
            root=Path(params["data.root"]),
            seed=params["seed"],
            test_fraction=params["data.test_fraction"],
            download=params["data.download"],
        )
        write_store(store, args.out)
        log.info(
            "%s: %d images of shape %s in %d classes -> %s (%.1fs)",
            params["data.source"], len(store.labels), tuple(store.images.shape[1:]),
            len(store.classes), args.out, time.perf_counter() - start,
        )

    return run("download", body)
