"""The one exception hierarchy of pysendmail, and the temporary/permanent verdict.

Everything that can go wrong is one of these classes, so that exactly one place
(the CLI) turns an error into a sysexits status and one line on stderr, and one
place (``error_for_reply``) turns an SMTP reply into an error class.

The module sits at the bottom of the import graph: it imports nothing from the
project and nothing heavy from the standard library, because the ``sendmail``
hot path imports it on every invocation.

SMTP errors also subclass the builtin they resemble (``TimeoutError``,
``ConnectionError``), as aiosmtplib does, so a caller may catch either.
"""

# No ``from __future__`` and no ``typing`` at run time: this module is on the
# hot path, where ``import typing`` alone costs more than the whole budget.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Protocol

    class Reply(Protocol):
        """What an error needs of an SMTP reply (``pysendmail.smtp.Response`` is one)."""

        @property
        def code(self) -> int: ...
        @property
        def enhanced(self) -> str | None: ...
        @property
        def string(self) -> str: ...
        @property
        def message(self) -> str: ...


# sysexits(3): the exit statuses of sendmail and its peers.
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_NOUSER = 67
EX_NOHOST = 68
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSERR = 71
EX_OSFILE = 72
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_PROTOCOL = 76
EX_NOPERM = 77
EX_CONFIG = 78


class PysendmailError(Exception):
    """Base of every error the project raises on purpose.

    ``exit_status`` is the sysexits code the ``sendmail`` command exits with when
    this error ends it; the message is the one line printed on stderr.
    """

    exit_status: int = EX_SOFTWARE


class UsageError(PysendmailError):
    """Bad command line: unknown flag, missing value, no recipients."""

    exit_status = EX_USAGE


class DataError(PysendmailError):
    """Malformed input: a message, an address or a flag value we refuse."""

    exit_status = EX_DATAERR


class NoUserError(PysendmailError):
    """An address names a local user that does not exist."""

    exit_status = EX_NOUSER


class ConfigError(PysendmailError):
    """The configuration is missing, unreadable or invalid."""

    exit_status = EX_CONFIG


class PermissionDeniedError(PysendmailError):
    """The invoking user may not do what was asked."""

    exit_status = EX_NOPERM


class CantCreateError(PysendmailError):
    """A queue or temporary file could not be created."""

    exit_status = EX_CANTCREAT


class IOFailure(PysendmailError):
    """Reading input or writing a file failed part way."""

    exit_status = EX_IOERR


class TemporaryFailure(PysendmailError):
    """Nothing was kept, try again later (direct mode only)."""

    exit_status = EX_TEMPFAIL


# --------------------------------------------------------------------------- SMTP


def _enhanced_class(enhanced: str | None) -> int | None:
    if enhanced and enhanced[0] in "245" and enhanced[1:2] == ".":
        return int(enhanced[0])
    return None


class SMTPError(PysendmailError):
    """Base of every SMTP client error.

    ``response`` is the server's reply when there was one (``None`` for local
    refusals, timeouts and lost connections). ``temporary`` says whether trying
    the same thing later may succeed: from the enhanced status code when the
    server sent one (RFC 3463 says it is the more precise of the two), else from
    the reply code; errors without a reply decide for themselves.
    """

    exit_status = EX_UNAVAILABLE
    #: Verdict for errors that carry no reply.
    default_temporary: bool = False

    def __init__(self, message: str = "", response: "Reply | None" = None) -> None:
        if not message and response is not None:
            message = response.string.rstrip("\r\n").replace("\r\n", " / ")
        super().__init__(message)
        self.response = response

    @property
    def code(self) -> int | None:
        return self.response.code if self.response is not None else None

    @property
    def enhanced(self) -> str | None:
        return self.response.enhanced if self.response is not None else None

    @property
    def temporary(self) -> bool:
        if self.response is None:
            return self.default_temporary
        klass = _enhanced_class(self.response.enhanced)
        if klass is None:
            klass = self.response.code // 100
        return klass == 4


class SMTPServerBusy(SMTPError):
    """A 4xx reply: the server says try again later."""

    exit_status = EX_TEMPFAIL
    default_temporary = True


class SMTPSyntaxError(SMTPError):
    """A 50x reply: the server did not understand or accept the command's syntax."""


class SMTPAuthenticationError(SMTPError):
    """A 53x reply, or an AUTH exchange that failed."""

    exit_status = EX_NOPERM


class SMTPFatalError(SMTPError):
    """Any other 5xx reply: a permanent refusal."""


class SMTPUnknownError(SMTPError):
    """A reply outside what the command allows (e.g. 1xx, 6xx, or 3xx where 2xx was due)."""

    exit_status = EX_PROTOCOL
    default_temporary = True


class SMTPUnsupportedCommand(SMTPError):
    """The server lacks an extension that is required (STARTTLS, AUTH, a mechanism, SMTPUTF8)."""


class SMTPMessageTooLarge(SMTPFatalError):
    """The message is larger than the server's declared SIZE limit; refused before MAIL."""


class SMTPSecurityError(SMTPError):
    """Refused locally for safety: e.g. AUTH over an unencrypted connection."""

    exit_status = EX_NOPERM


class SMTPTLSError(SMTPError, ConnectionError):
    """The TLS handshake or certificate verification failed."""

    exit_status = EX_TEMPFAIL
    default_temporary = True


class SMTPServerDisconnected(SMTPError, ConnectionError):
    """The connection is gone; the session is dead and every later command raises this."""

    exit_status = EX_TEMPFAIL
    default_temporary = True


class SMTPResetError(SMTPServerDisconnected):
    """The session could not be reset for the next message; it is closed, nothing was sent.

    Raised by ``SMTP.send_message(..., reset=True)`` (and ``open_message_stream``)
    when RSET was refused, went unanswered (the connection ended or timed
    out, or the server said 421), or the session was over already; and by
    ``SMTP.rset()`` when RSET was refused. ``response`` is the reply to RSET
    when there was one. The connection is closed without any message body
    being ended, so the server delivered nothing of the message, and a new
    session may carry it (the relay does so). It is temporary whatever the
    reply said: it is about the session, not about the message.
    """

    @property
    def temporary(self) -> bool:
        return True


class SMTPConnectError(SMTPError, ConnectionError):
    """The TCP connection could not be opened (refused, unreachable, name unknown)."""

    exit_status = EX_TEMPFAIL
    default_temporary = True


class SMTPTimeoutError(SMTPError, TimeoutError):
    """Base of the three timeouts."""

    exit_status = EX_TEMPFAIL
    default_temporary = True


class SMTPOpenTimeout(SMTPTimeoutError):
    """Connecting, the TLS handshake or the greeting took longer than ``open_timeout``."""


class SMTPReadTimeout(SMTPTimeoutError):
    """A reply took longer than ``read_timeout``."""


class SMTPWriteTimeout(SMTPTimeoutError):
    """Writing to the server took longer than ``write_timeout``."""


class SMTPRecipientsRefused(SMTPError):
    """The server accepted none of the recipients; no DATA was sent.

    ``refused`` maps each recipient address to the reply that refused it. The
    error is temporary only when every refusal was temporary.
    """

    def __init__(self, refused: "Mapping[str, Reply]", message: str = "") -> None:
        if not message:
            parts = [f"<{addr}>: {err_text(resp)}" for addr, resp in refused.items()]
            message = "all recipients were refused: " + "; ".join(parts)
        first = next(iter(refused.values()), None)
        super().__init__(message, first)
        self.refused = dict(refused)

    @property
    def temporary(self) -> bool:
        return bool(self.refused) and all(
            SMTPError("", resp).temporary for resp in self.refused.values()
        )


def err_text(response: "Reply") -> str:
    """A reply as one line, for messages and logs."""
    return response.string.rstrip("\r\n").replace("\r\n", " / ")


def error_for_reply(response: "Reply", *, during_auth: bool = False) -> SMTPError:
    """The one mapping from an unwanted SMTP reply to the error that reports it.

    During AUTH a 5xx is an authentication failure whatever its second digit
    (servers answer 535, 534, 538, 504 or 501 to bad credentials); a 4xx stays
    ``SMTPServerBusy`` so that the caller retries rather than gives up.
    """
    code = response.code
    klass = code // 100
    if klass == 4:
        return SMTPServerBusy("", response)
    if klass == 5:
        if during_auth or 530 <= code <= 539:
            return SMTPAuthenticationError("", response)
        if 500 <= code <= 509:
            return SMTPSyntaxError("", response)
        return SMTPFatalError("", response)
    return SMTPUnknownError("", response)
