"""Reply texts shared by serve's listener and its commit processes.

Kept apart from ``listener`` so that a commit process, which turns a failed
intake into a reply, does not load aiosmtpd and asyncio to do it.

SECURITY: ``reply_text`` is the one way client-derived text (an address, an
error that quotes the message) reaches a reply line: printable, one line, cut
short.
"""

from __future__ import annotations

from pysendmail import errors
from pysendmail.log import printable

#: Failures that say nothing about the message: the client should try again.
_TEMPORARY = (
    errors.TemporaryFailure,
    errors.CantCreateError,
    errors.IOFailure,
    errors.PermissionDeniedError,
    errors.ConfigError,
)


def reply_text(text: object, limit: int = 200) -> str:
    """Client-derived text made safe for one reply line: printable, one line, short."""
    return " ".join(printable(text, limit).split())


def failure(exc: BaseException) -> tuple[str, str | None, str]:
    """The DATA reply, the log text (``None``: not ours to answer) and level for a failure."""
    if isinstance(exc, _TEMPORARY):
        return (
            f"451 4.3.0 Cannot queue the message now, try again later: {reply_text(exc, 120)}",
            f"not queued: {exc}",
            "error",
        )
    if isinstance(exc, errors.PysendmailError):
        return f"554 5.6.0 Message refused: {reply_text(exc)}", f"refused: {exc}", "warning"
    if isinstance(exc, OSError):
        return (
            "451 4.3.0 Cannot queue the message now, try again later",
            f"not queued: {exc.strerror or exc}",
            "error",
        )
    return "451 4.3.0 Temporary server error, try again later", None, "error"
