"""Expected failures of any ``hicae`` command as one line on stderr (``hicae CMD: error: ...``, exit 1).

Every command runs through ``run_command``. What counts as an expected failure, and its one-line
message, is ``hicae.failures.describe`` (the server maps the same failures to HTTP statuses);
anything else keeps its traceback, so that bugs stay visible.
"""

from __future__ import annotations

import sys
from typing import Callable

from ..failures import describe


def run_command(cmd: str, func: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """Run one command; an expected failure is printed as one line and gives exit status 1."""
    try:
        return int(func(argv) or 0)
    except KeyboardInterrupt:
        print(f"hicae {cmd}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = describe(e)
        if message is None:
            raise
        print(f"hicae {cmd}: error: {message}", file=sys.stderr)
        return 1
