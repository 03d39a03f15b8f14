"""The ``stage1`` command's entry point: a Ctrl-C while the command is still importing its libraries (a
second or two: pandas, torch, DeepSpeed) ends with one line and exit code 130, like one at any later moment
(`stage1_ds.cli`), never with a traceback of import frames."""

from __future__ import annotations

import sys

#: The exit code of a command stopped by Ctrl-C (128 + SIGINT, as a shell reports it).
INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    try:
        from stage1_ds.cli import main as run

        return run(argv)
    except KeyboardInterrupt:
        print("stage1: interrupted (Ctrl-C) while starting; nothing was done", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
