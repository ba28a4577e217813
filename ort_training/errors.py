"""Expected errors, told apart from bugs: `UsageError` is what the user can fix (a flag, a file, a folder, data
that breaks the schema, a checkpoint that belongs to another run). Every entry point (`bert-pretrain`,
`bert-finetune`, `bert-evaluate`, `bert-predict`, the two-phase runner) turns it into one line on stderr naming the
file or flag and what to do, exit 2, and no traceback (`exit_on_expected`), as data_prep does. Anything else is a
bug and keeps its traceback.

`UsageError` is a ValueError, so a caller that catches ValueError (argparse through `bundle.cli.parse_into`, older
code) still sees it. The data errors (`DataError`, `TextDataError`) and the model-folder errors are subclasses."""

from __future__ import annotations

import sys
from typing import Callable

from bundle.locking import RunLockedError

USAGE_EXIT_CODE = 2
"""Bad flags or data: one line naming the flag or file, no traceback (as data_prep and argparse do)."""


class UsageError(ValueError):
    """An expected error the user can fix; its message names the file or flag and what to do."""


class MissingDependencyError(UsageError, RuntimeError):
    """An optional component this run asks for is not installed (torch-ort, onnx): install it or choose another option."""


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (UsageError, RunLockedError, FileNotFoundError, FileExistsError)
"""What an entry point reports as one line. RunLockedError: another run holds the output folder (its message says
which). FileNotFoundError / FileExistsError are raised for the user's paths (a missing file, an output that
exists), and carry the path."""


def one_line(exc: BaseException) -> str:
    """The message on one line (multi-line messages from libraries are joined)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__


def report(prog: str, exc: BaseException) -> int:
    print(f"{prog}: error: {one_line(exc)}", file=sys.stderr, flush=True)
    return USAGE_EXIT_CODE


INTERRUPTED_EXIT_CODE = 130
"""128 + SIGINT, the shell's status for Ctrl-C."""


def interrupted(prog: str) -> int:
    """Ctrl-C (SIGINT): one line and exit 130, not a KeyboardInterrupt traceback. What was saved stays (checkpoints are
    written whole, outputs under temporary names); SIGTERM is the signal that checkpoints first (loop/preemption.py)."""
    print(f"{prog}: error: stopped by Ctrl-C (SIGINT); checkpoints and finished outputs are kept: rerun the same command "
          "(with --resume_from_checkpoint for a training run) to continue", file=sys.stderr, flush=True)
    return INTERRUPTED_EXIT_CODE


def exit_on_expected(prog: str, body: Callable[[], int]) -> int:
    """Run an entry point's body; an expected error becomes one line on stderr and exit 2, Ctrl-C one line and exit
    130, a bug keeps its traceback."""
    try:
        return body()
    except EXPECTED_ERRORS as exc:
        return report(prog, exc)
    except KeyboardInterrupt:
        return interrupted(prog)


def refuse_remote_code(folder) -> None:
    """bundle.digest's refusal of a folder that names custom code (`auto_map`), as the expected error it is."""
    from bundle.digest import refuse_remote_code as check

    try:
        check(folder)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
