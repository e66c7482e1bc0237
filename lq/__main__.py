"""`python -m lq <step> ...`: dispatch to the stage entry points in `lq.steps`."""

from __future__ import annotations

import importlib
import sys

from lq.steps import STEPS


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STEPS:
        print(f"usage: python -m lq <step> [options]\nsteps: {', '.join(STEPS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"lq.steps.{argv[0]}")
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
