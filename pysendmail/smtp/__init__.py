"""pysendmail.smtp: a complete SMTP client session, Ruby's Net::SMTP spelled in Python.

::

    from pysendmail.smtp import SMTP

    with SMTP.start("smtp.example.com", 587, helo="client.example.com",
                    user="me", secret="pw") as smtp:
        smtp.send_message(message, "from@example.com", "to@example.com")

The pieces: ``client`` (the blocking ``SMTP`` class), ``protocol`` (the
sans-I/O session core it drives), ``reply`` (``Response`` and its bounded
parser), ``address`` (envelope addresses with ESMTP parameters), ``encoder``
(CRLF normalisation and dot-stuffing, streamed), ``auth`` (SASL mechanisms).
Every SMTP error class of ``pysendmail.errors`` is re-exported here.

This package imports nothing from the rest of the project but ``errors``, and
it must stay that way: it is a library of its own. The names are loaded on
first use, so importing ``pysendmail.smtp.address`` alone does not load
``ssl`` and ``socket``.
"""

# No ``importlib``, ``typing`` or ``from __future__`` at run time: see
# ``client`` for why every import on this path is counted.
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pysendmail.errors import (
        SMTPAuthenticationError,
        SMTPConnectError,
        SMTPError,
        SMTPFatalError,
        SMTPMessageTooLarge,
        SMTPOpenTimeout,
        SMTPReadTimeout,
        SMTPRecipientsRefused,
        SMTPResetError,
        SMTPSecurityError,
        SMTPServerBusy,
        SMTPServerDisconnected,
        SMTPSyntaxError,
        SMTPTimeoutError,
        SMTPTLSError,
        SMTPUnknownError,
        SMTPUnsupportedCommand,
        SMTPWriteTimeout,
        error_for_reply,
    )
    from pysendmail.smtp.address import Address
    from pysendmail.smtp.client import SMTP, MessageWriter, SendResult
    from pysendmail.smtp.protocol import ClientProtocol, LocalProtocolError
    from pysendmail.smtp.reply import Capabilities, Response, SMTPProtocolError

_ERRORS = (
    "SMTPAuthenticationError",
    "SMTPConnectError",
    "SMTPError",
    "SMTPFatalError",
    "SMTPMessageTooLarge",
    "SMTPOpenTimeout",
    "SMTPReadTimeout",
    "SMTPRecipientsRefused",
    "SMTPResetError",
    "SMTPSecurityError",
    "SMTPServerBusy",
    "SMTPServerDisconnected",
    "SMTPSyntaxError",
    "SMTPTimeoutError",
    "SMTPTLSError",
    "SMTPUnknownError",
    "SMTPUnsupportedCommand",
    "SMTPWriteTimeout",
    "error_for_reply",
)

# Where each public name lives.
_HOMES: dict[str, str] = {
    **dict.fromkeys(_ERRORS, "pysendmail.errors"),
    "Address": "pysendmail.smtp.address",
    "SMTP": "pysendmail.smtp.client",
    "MessageWriter": "pysendmail.smtp.client",
    "SendResult": "pysendmail.smtp.client",
    "ClientProtocol": "pysendmail.smtp.protocol",
    "LocalProtocolError": "pysendmail.smtp.protocol",
    "Capabilities": "pysendmail.smtp.reply",
    "Response": "pysendmail.smtp.reply",
    "SMTPProtocolError": "pysendmail.smtp.reply",
}

__all__ = [
    "SMTP",
    "Address",
    "Capabilities",
    "ClientProtocol",
    "LocalProtocolError",
    "MessageWriter",
    "Response",
    "SMTPAuthenticationError",
    "SMTPConnectError",
    "SMTPError",
    "SMTPFatalError",
    "SMTPMessageTooLarge",
    "SMTPOpenTimeout",
    "SMTPProtocolError",
    "SMTPReadTimeout",
    "SMTPRecipientsRefused",
    "SMTPResetError",
    "SMTPSecurityError",
    "SMTPServerBusy",
    "SMTPServerDisconnected",
    "SMTPSyntaxError",
    "SMTPTLSError",
    "SMTPTimeoutError",
    "SMTPUnknownError",
    "SMTPUnsupportedCommand",
    "SMTPWriteTimeout",
    "SendResult",
    "error_for_reply",
]


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    __import__(home)
    value = getattr(sys.modules[home], name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
