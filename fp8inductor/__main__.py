"""Command line: ``python -m fp8inductor demo [...]``."""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "demo": "run the end-to-end demo on a small Llama-style model",
        "tune": "time GEMM configurations on this GPU and write its tuning table",
    }
    if not argv or argv[0] not in commands:
        print("usage: python -m fp8inductor COMMAND [options]\n\ncommands:")
        for name, what in commands.items():
            print(f"  {name:<8} {what}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if argv[0] == "demo":
        from .demo import main as demo_main

        return demo_main(argv[1:])
    if argv[0] == "tune":
        from .tune import main as tune_main

        return tune_main(argv[1:])
    return 2


if __name__ == "__main__":
    sys.exit(main())
