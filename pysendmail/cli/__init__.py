"""The commands: ``sendmail`` (also as ``mailq`` and ``newaliases``) and ``pysendmail``.

``main(argv) -> int`` is the whole sendmail command: parse argv into an
Invocation (cli.argv), run the mode it names, and turn every error into one
line on stderr and one sysexits status. Nothing escapes as a traceback: a
program that pipes mail into sendmail reads only the exit status, and a
sysadmin reads one line.

Hot path: this module and what it imports before the mode is known must stay
as cheap as ``python -I -c pass`` allows (see DESIGN.md, Performance): only os,
sys and pysendmail.errors at import time; each mode imports what it needs.
"""

import os
import sys

from pysendmail import errors

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO, TextIO


class Streams:
    """The standard streams and environment of one invocation (tests pass their own)."""

    __slots__ = ("environ", "stderr", "stdin", "stdout")

    def __init__(
        self,
        stdin: "BinaryIO | None" = None,
        stdout: "TextIO | None" = None,
        stderr: "TextIO | None" = None,
        environ: "dict[str, str] | None" = None,
    ) -> None:
        self.stdin = stdin if stdin is not None else sys.stdin.buffer
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        self.environ = environ if environ is not None else dict(os.environ)


def _say(stream: "TextIO", line: str) -> None:
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        # sudo runs the MTA with stderr closed or on /dev/null; the exit status
        # still tells the caller what happened.
        pass


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "unknown error"


def main(argv: list[str], streams: Streams | None = None) -> int:
    """Run the sendmail command with ``argv`` (argv[0] is the program name)."""
    io = streams if streams is not None else Streams()
    prog = os.path.basename(argv[0]) if argv and argv[0] else "sendmail"

    def run() -> int:
        from pysendmail.cli import argv as argvmod

        invocation = argvmod.parse(argv)
        from pysendmail.cli import sendmail

        return sendmail.run(invocation, io)

    return guarded(prog, io, run)


def guarded(prog: str, io: Streams, run: "Callable[[], int]") -> int:
    """Call ``run`` and turn anything it raises into one line on stderr and a sysexits status.

    This is the one place where errors become exit statuses.
    """
    try:
        return run()
    except errors.PysendmailError as exc:
        _say(io.stderr, f"{prog}: {_one_line(str(exc))}")
        return exc.exit_status
    except KeyboardInterrupt:
        _say(io.stderr, f"{prog}: interrupted; nothing was sent or queued")
        return errors.EX_TEMPFAIL
    except MemoryError:
        _say(io.stderr, f"{prog}: out of memory; nothing was sent or queued")
        return errors.EX_TEMPFAIL
    except OSError as exc:
        _say(io.stderr, f"{prog}: {_one_line(os_error_text(exc))}")
        return errors.EX_IOERR
    except Exception as exc:
        # A bug of ours. The caller still gets one line and a status that means
        # "try again later", and the message was not acknowledged.
        _say(io.stderr, f"{prog}: internal error: {type(exc).__name__}: {_one_line(str(exc))}")
        return errors.EX_SOFTWARE


def os_error_text(exc: OSError) -> str:
    what = exc.strerror or str(exc)
    if exc.filename:
        return f"{exc.filename}: {what}"
    return what


def sendmail_main() -> int:
    """Console entry point ``sendmail``."""
    return main(sys.argv)


def mailq_main() -> int:
    """Console entry point ``mailq`` (the same as ``sendmail -bp``)."""
    return main(["mailq", *sys.argv[1:]])


def newaliases_main() -> int:
    """Console entry point ``newaliases`` (the same as ``sendmail -bi``)."""
    return main(["newaliases", *sys.argv[1:]])


def admin_main() -> int:
    """Console entry point ``pysendmail``: configuration, queue and the sidecar."""
    from pysendmail.cli import admin

    return admin.main(sys.argv[1:], Streams())
