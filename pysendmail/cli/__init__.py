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
    from typing import BinaryIO, NoReturn, TextIO


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
        # sys.stdin/stdout/stderr are None when the caller started us with that
        # descriptor closed; main() has put /dev/null there since (standard_fds).
        if stdin is None:
            stdin = sys.stdin.buffer if sys.stdin is not None else _binary_stream(0)
        if stdout is None:
            stdout = sys.stdout if sys.stdout is not None else _text_stream(1)
        if stderr is None:
            stderr = sys.stderr if sys.stderr is not None else _text_stream(2)
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.environ = environ if environ is not None else dict(os.environ)


def _binary_stream(fd: int) -> "BinaryIO":
    return open(fd, "rb", closefd=False)


def _text_stream(fd: int) -> "TextIO":
    return open(fd, "w", encoding="utf-8", errors="backslashreplace", closefd=False)


def standard_fds() -> None:
    """Open /dev/null on whichever of descriptors 0, 1 and 2 the caller left closed.

    Daemons and some cron setups start sendmail with a standard descriptor
    closed. Left so, the first file or socket we open would take its number:
    the queue file, or the relay's connection, would become "stdout", and a
    line meant for the terminal would land inside it. Postfix's sendmail does
    the same repair first thing.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:  # cannot happen with 0..fd-1 open, but be exact
                os.dup2(null, fd)
                os.close(null)


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
    if streams is None:
        standard_fds()
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


def script(prog: "str | None" = None) -> "NoReturn":
    """What the installed ``sendmail``, ``mailq`` and ``newaliases`` scripts run.

    ``prog`` replaces argv[0] (``mailq`` is ``sendmail -bp`` under its own name);
    None keeps it, so a ``sendmail`` reached through a symlink names itself as
    called. The scripts are ours (``scripts/`` in the source tree), not pip's
    console-script wrappers, which import ``re`` on every start; see exit_now.
    """
    argv = sys.argv if prog is None else [prog, *sys.argv[1:]]
    name = os.path.basename(argv[0]) if argv and argv[0] else "sendmail"
    exit_now(main(argv), name)


def exit_now(status: int, prog: str = "sendmail") -> "NoReturn":
    """Flush stdout and stderr, then end the process with ``status``, skipping teardown when safe.

    The interpreter's teardown (freeing every module, a last garbage collection)
    costs sendmail about a fifth of its run and does nothing for it: by now the
    message is committed and fsynced, or refused with its one line written. So
    the process ends with ``os._exit`` unless something could still be owed
    work at exit: an ``atexit`` callback (coverage, multiprocessing, logging),
    or any thread (``threading`` loaded: ``sendmail -q`` and direct mode may
    run workers). Then it exits the ordinary way. A stdout that cannot take the
    last of its output (a closed pipe) turns a 0 into 74 with one line, as any
    other failed write does, instead of the interpreter's warning at teardown.
    """
    import atexit

    out = sys.stdout
    if out is not None:
        try:
            out.flush()
        except (OSError, ValueError) as exc:
            if status == 0:
                status = errors.EX_IOERR
                text = os_error_text(exc) if isinstance(exc, OSError) else str(exc)
                _say(sys.stderr, f"{prog}: standard output: {_one_line(text)}")
            _drop_output(out)
    err = sys.stderr
    if err is not None:
        try:
            err.flush()
        except (OSError, ValueError):
            _drop_output(err)
    if "threading" not in sys.modules and atexit._ncallbacks() == 0:
        os._exit(status)
    sys.exit(status)


def _drop_output(stream: "TextIO") -> None:
    """Point ``stream`` at /dev/null so that teardown does not retry a write that failed."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)
    except (OSError, ValueError):
        pass


def sendmail_main() -> int:
    """Console entry point ``sendmail`` (kept for ``python -m`` and embedders; see script)."""
    return main(sys.argv)


def mailq_main() -> int:
    """Console entry point ``mailq`` (the same as ``sendmail -bp``)."""
    return main(["mailq", *sys.argv[1:]])


def newaliases_main() -> int:
    """Console entry point ``newaliases`` (the same as ``sendmail -bi``)."""
    return main(["newaliases", *sys.argv[1:]])


def admin_main() -> int:
    """Console entry point ``pysendmail``: configuration, queue and the sidecar."""
    standard_fds()
    from pysendmail.cli import admin

    return admin.main(sys.argv[1:], Streams())
