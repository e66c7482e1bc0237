"""Stage `download`: ingest the configured image source into the compact store."""

from __future__ import annotations

from pathlib import Path

from lq.data import ingest
from lq.steps import step


def main(argv: list[str]) -> int:
    def body(args, p) -> None:
        ingest.ingest(p["data.source"], root=Path(p["data.root"]), seed=p["seed"],
                      test_fraction=p["data.test_fraction"], download=p["data.download"], out=args.store)

    return step("download", argv, __doc__, body)
