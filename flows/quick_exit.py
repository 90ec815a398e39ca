"""The command's exit without the interpreter's teardown, once everything that holds data is done.

At exit Python joins the threads (Prefect's log and event workers drain there), runs the exit
handlers (logging's flush among them), and then frees every module and object one at a time: 0.6 s
after a cached rerun on a 2-core Zen 3, none of it reaching a file or the server. flows/cli.py imports
this module before anything else, so the handler here is registered first and runs last, after all
the others; `exit_quickly(code)` arms it. main() called in-process (as the tests do) never arms it.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn

_code: list[int] = []


def _exit_now() -> None:
    if not _code:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing left to save
            pass
    os._exit(_code[0])


atexit.register(_exit_now)


def exit_quickly(code: int) -> NoReturn:
    """sys.exit(code), ending the process once the threads and the other exit handlers are done."""
    _code.append(code)
    sys.exit(code)
