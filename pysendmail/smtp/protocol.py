"""The SMTP client protocol without I/O: commands in, bytes out; bytes in, replies out.

``ClientProtocol`` is the whole state of one SMTP session as the client sees
it, in the manner of h11: the caller turns a command into wire bytes with
``send(command)`` (or a pipelined batch with ``send_many``; ``send_body`` and
``end_body`` for the message), hands whatever the network delivered to ``receive_data``
(``b""`` meaning the server closed the connection), and takes the replies from
``next_reply``, which match the commands sent, in order. It never touches a
socket, a clock or ``ssl``, so it is tested with scripted bytes and can be
driven by the blocking client here or by an asyncio transport later.

What it decides, so that no driver can get it wrong:

* Every argument is checked before a byte is produced: no C0 control
  character or DEL in any command (``ValueError``), no extension used that the
  server did not offer (``SMTPUnsupportedCommand``), no message announced that
  is larger than the server's SIZE limit (``SMTPMessageTooLarge``).
* The MAIL parameters: SIZE when offered and the size is known, BODY=8BITMIME
  when offered and the body has 8-bit octets, SMTPUTF8 when an address needs
  it, and the DSN parameters dropped when the server does not offer DSN.
* The state: which command may come next. A command that would be read as
  something else by the server (anything during the message body, during an
  AUTH exchange, or between a STARTTLS 220 and the TLS handshake) is refused
  with ``LocalProtocolError``, as is anything out of order. With PIPELINING,
  commands may be sent before the replies to earlier ones arrive; the state
  then runs ahead on the assumption that they succeed, and falls back when a
  reply says otherwise.
* 421 from the server, a QUIT, a refused RSET, the end of the connection or a
  malformed reply close the session: every later ``send`` raises
  ``SMTPServerDisconnected``. A refused RSET closes it because nothing the
  client could do next is safe. RSET is how a client that reuses a session
  (a queue runner, between messages) forgets the last transaction, and with
  PIPELINING it goes in one write with the next MAIL, RCPT and DATA
  (RFC 2920 section 3.1 allows it). If the server refused it, the replies
  that follow describe a transaction whose start nobody knows, and a 354
  among them must not open a body. Postfix does not reuse such a session
  either; the driver closes the connection without ending any body, so the
  server delivers nothing from it.

Errors are split as h11 splits them: ``LocalProtocolError`` when the caller
broke the protocol, ``SMTPProtocolError`` (from ``reply``) when the server did.
Mapping an unwanted reply to an exception is the caller's business
(``pysendmail.errors.error_for_reply``): this module reports, it does not
judge.
"""

# No ``enum``, ``dataclasses``, ``collections``, ``typing``, ``base64`` (which
# brings ``re``) or ``from __future__`` at run time: every ``sendmail`` that
# relays directly imports this module, and those imports cost more than the
# SMTP dialogue. States are singletons of a small class, commands ``__slots__``
# classes, and annotations naming typing-only things are quoted.
from pysendmail.errors import (
    SMTPMessageTooLarge,
    SMTPServerDisconnected,
    SMTPUnsupportedCommand,
)
from pysendmail.smtp.address import DSN_PARAMETERS, check_argument, format_parameter
from pysendmail.smtp.encoder import BodyEncoder, normalise
from pysendmail.smtp.reply import Capabilities, ReplyParser, SMTPProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, ClassVar

    from pysendmail.smtp.address import Address
    from pysendmail.smtp.reply import Response

__all__ = [
    "Auth",
    "AuthCancel",
    "AuthResponse",
    "ClientProtocol",
    "Command",
    "Data",
    "Ehlo",
    "Helo",
    "LocalProtocolError",
    "Mail",
    "Noop",
    "Quit",
    "Rcpt",
    "Rset",
    "StartTLS",
    "State",
]

_CRLF = b"\r\n"
_END_OF_DATA = b".\r\n"


class LocalProtocolError(RuntimeError):
    """The caller asked for something the protocol does not allow now (a bug in the caller)."""


class State:
    """Where the session is, as far as the replies received so far tell.

    The states are the class attributes (``State.READY``...), one object each,
    compared with ``is``; ``name`` and ``value`` read as an enum's would.
    """

    __slots__ = ("name", "value")

    GREETING: "ClassVar[State]"  # connected; the server's 220 has not arrived yet
    CONNECTED: "ClassVar[State]"  # greeted (or just after TLS started): EHLO or HELO is next
    READY: "ClassVar[State]"  # EHLO/HELO accepted; no mail transaction open
    MAIL: "ClassVar[State]"  # MAIL FROM accepted; no recipient yet
    RCPT: "ClassVar[State]"  # at least one RCPT TO sent after MAIL
    BODY: "ClassVar[State]"  # 354 received: the message content goes out now
    AUTH: "ClassVar[State]"  # 334 received: an AUTH response line is due
    TLS: "ClassVar[State]"  # 220 to STARTTLS: the TLS handshake must start now
    CLOSED: "ClassVar[State]"  # QUIT, 421, refused RSET, end of connection, protocol error

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = name.lower()

    def __repr__(self) -> str:
        return f"<State.{self.name}: {self.value!r}>"


GREETING = State.GREETING = State("GREETING")
CONNECTED = State.CONNECTED = State("CONNECTED")
READY = State.READY = State("READY")
MAIL = State.MAIL = State("MAIL")
RCPT = State.RCPT = State("RCPT")
BODY = State.BODY = State("BODY")
AUTH = State.AUTH = State("AUTH")
TLS = State.TLS = State("TLS")
CLOSED = State.CLOSED = State("CLOSED")


# --------------------------------------------------------------------------- commands


class Command:
    """A command the client can send. ``ClientProtocol.send`` turns it into bytes.

    Commands are plain ``__slots__`` classes (a dataclass costs its import and
    a microsecond more to build, on the path of every message) and are never
    changed once made. Two commands are equal when their kind and fields are.
    """

    __slots__ = ()
    #: Its verb, for traces and messages.
    verb: "ClassVar[str]" = ""

    def trace(self, line: bytes) -> str:
        """How the command appears in a debug trace: as sent, unless it carries secrets."""
        return line.decode("utf-8", "replace")

    def __repr__(self) -> str:
        names: tuple[str, ...] = self.__slots__
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        names: tuple[str, ...] = self.__slots__
        return all(getattr(self, name) == getattr(other, name) for name in names)

    __hash__ = None  # type: ignore[assignment]  # equal by value, so not hashable


class Ehlo(Command):
    """EHLO domain (RFC 5321 section 4.1.1.1)."""

    __slots__ = ("domain",)
    verb = "EHLO"

    def __init__(self, domain: str) -> None:
        self.domain = domain


class Helo(Command):
    """HELO domain, for servers that do not speak ESMTP."""

    __slots__ = ("domain",)
    verb = "HELO"

    def __init__(self, domain: str) -> None:
        self.domain = domain


class StartTLS(Command):
    """STARTTLS (RFC 3207)."""

    __slots__ = ()
    verb = "STARTTLS"


class Auth(Command):
    """AUTH mechanism [initial-response] (RFC 4954); ``initial`` is raw, base64 is done here."""

    __slots__ = ("initial", "mechanism")
    verb = "AUTH"

    def __init__(self, mechanism: str, initial: bytes | None = None) -> None:
        self.mechanism = mechanism
        self.initial = initial

    def trace(self, line: bytes) -> str:
        if self.initial is None:
            return line.decode("ascii", "replace")
        return f"AUTH {self.mechanism} <redacted>\r\n"

    def __repr__(self) -> str:
        # Keeps credentials out of tracebacks that show locals or arguments.
        return f"Auth({self.mechanism!r}, <redacted>)"


class AuthResponse(Command):
    """One answer to a 334 challenge; ``data`` is raw, base64 is done here."""

    __slots__ = ("data",)
    verb = "AUTH response"

    def __init__(self, data: bytes) -> None:
        self.data = data

    def trace(self, line: bytes) -> str:
        return "<redacted>\r\n"

    def __repr__(self) -> str:
        return "AuthResponse(<redacted>)"


class AuthCancel(Command):
    """The line "*": abandons an AUTH exchange after a 334 (RFC 4954 section 4)."""

    __slots__ = ()
    verb = "AUTH cancel"


class Mail(Command):
    """MAIL FROM, with the parameters the session decides on.

    ``size`` is the message's octets after line-end normalisation, when known
    (declared as SIZE= when the server offers SIZE, and checked against its
    limit); ``eightbit`` says the body has 8-bit octets (BODY=8BITMIME when
    offered); ``smtputf8`` asks for SMTPUTF8 because some recipient needs it
    (the sender's own address is looked at here).
    """

    __slots__ = ("eightbit", "sender", "size", "smtputf8")
    verb = "MAIL"

    def __init__(
        self,
        sender: "Address",
        size: int | None = None,
        eightbit: bool = False,
        smtputf8: bool = False,
    ) -> None:
        self.sender = sender
        self.size = size
        self.eightbit = eightbit
        self.smtputf8 = smtputf8

    def __repr__(self) -> str:
        return (
            f"Mail(sender={self.sender!r}, size={self.size!r}, "
            f"eightbit={self.eightbit!r}, smtputf8={self.smtputf8!r})"
        )


class Rcpt(Command):
    """RCPT TO, with the recipient's own parameters."""

    __slots__ = ("recipient",)
    verb = "RCPT"

    def __init__(self, recipient: "Address") -> None:
        self.recipient = recipient


class Data(Command):
    """DATA: the server answers 354 and the body follows."""

    __slots__ = ()
    verb = "DATA"


class Rset(Command):
    """RSET: abandons the mail transaction."""

    __slots__ = ()
    verb = "RSET"


class Noop(Command):
    """NOOP."""

    __slots__ = ()
    verb = "NOOP"


class Quit(Command):
    """QUIT: the server answers 221 and closes."""

    __slots__ = ()
    verb = "QUIT"


class _Greeting(Command):
    __slots__ = ()
    verb = "greeting"


class _EndOfData(Command):
    __slots__ = ()
    verb = "end of data"


_GREETING = _Greeting()
_END = _EndOfData()
#: DATA has no argument: one object serves every transaction.
DATA = Data()

# The states each command may be sent in. EHLO and RSET may interrupt a mail
# transaction (RFC 5321 sections 4.1.4 and 4.1.1.5); nothing may be sent while
# the server reads a body, an AUTH answer or a TLS handshake, because it would
# take the command for one of those.
_OPEN = (CONNECTED, READY, MAIL, RCPT)
# Tuples, not sets: a membership test by identity is cheaper than hashing.
_ALLOWED: "dict[type[Command], tuple[State, ...]]" = {
    Ehlo: _OPEN,
    Helo: _OPEN,
    StartTLS: (READY,),
    Auth: (READY,),
    AuthResponse: (AUTH,),
    AuthCancel: (AUTH,),
    Mail: (READY,),
    Rcpt: (MAIL, RCPT),
    Data: (RCPT,),
    Rset: _OPEN,
    Noop: _OPEN,
    Quit: _OPEN,
}

# Commands that must wait for every earlier reply: their reply decides what
# the connection is (a TLS handshake, an AUTH exchange, the body, its end).
_NOT_PIPELINABLE = frozenset({StartTLS, Auth, AuthResponse, AuthCancel})


# Reply codes, for the table below: the parser only returns three digits.
_2XX = range(200, 300)
_ANY = range(1000)

# The one transition table of the session. For each command: the replies
# that count as its success, the state after one of them, and the state after
# any other reply (None: the state stays as it was). Two rules stand above the
# table (``_advance``): a 421 closes the session after any command, and an
# accepted RSET before EHLO leaves the server still waiting for EHLO. Data,
# not functions: looking a transition up costs no call, on the path of every
# reply.
_TRANSITIONS: "dict[type[Command], tuple[range | tuple[int, ...], State | None, State | None]]" = {
    # A 554 greeting still leaves the server waiting for QUIT.
    _Greeting: (_ANY, CONNECTED, None),
    Ehlo: (_2XX, READY, None),
    Helo: (_2XX, READY, None),
    StartTLS: ((220,), TLS, READY),
    Auth: ((334,), AUTH, READY),
    AuthResponse: ((334,), AUTH, READY),
    AuthCancel: ((334,), AUTH, READY),
    Mail: (_2XX, MAIL, READY),
    Rcpt: (_2XX, RCPT, None),
    # 354 opens the body even when no recipient was accepted (a server bug):
    # the caller must then end an empty body at once (RFC 2920).
    Data: ((354,), BODY, None),
    _EndOfData: (_ANY, READY, None),
    # A refused RSET ends the session: see the module docstring.
    Rset: (_2XX, READY, CLOSED),
    Noop: (_ANY, None, None),
    Quit: (_ANY, CLOSED, None),
}


def _advance(state: State, kind: "type[Command]", code: int | None) -> State:
    """The state after a ``kind`` command got a reply with ``code`` (None: assume it succeeds)."""
    if code == 421:
        return CLOSED
    success, on_success, on_failure = _TRANSITIONS[kind]
    after = on_success if code is None or code in success else on_failure
    if after is None or (after is READY and kind is Rset and state is CONNECTED):
        return state
    return after


# Commands without arguments: their bytes never change.
_SIMPLE_LINES: "dict[type[Command], bytes]" = {
    kind: kind.verb.encode("ascii") + _CRLF for kind in (StartTLS, Data, Rset, Noop, Quit)
}
_SIMPLE_LINES[AuthCancel] = b"*\r\n"


def _b64(data: bytes) -> str:
    # binascii (C) rather than base64, which imports re; only AUTH needs it.
    import binascii

    return binascii.b2a_base64(data, newline=False).decode("ascii")


class ClientProtocol:
    """One SMTP client session, without I/O. See the module docstring.

    Attributes the caller may read: ``state`` (what the replies so far say),
    ``capabilities`` (from the last EHLO; empty after HELO and after STARTTLS
    until the next EHLO), ``esmtp`` (the last greeting was an accepted EHLO),
    ``authenticated`` and ``pending`` (replies still to come).
    """

    __slots__ = (
        "_8bitmime",
        "_body_octets",
        "_closed_reason",
        "_dsn",
        "_encoder",
        "_eof",
        "_max_size",
        "_parser",
        "_pending",
        "_pipelining",
        "_projected",
        "_size",
        "_smtputf8",
        "authenticated",
        "capabilities",
        "esmtp",
        "state",
    )

    def __init__(self) -> None:
        self._parser = ReplyParser()
        # The commands whose replies are due, oldest first (a list: there are
        # rarely more than a handful, and list.pop(0) needs no import).
        self._pending: list[Command] = [_GREETING]
        self.state: State = GREETING
        # The state once every pending command has succeeded: what the next
        # command is checked against when pipelining.
        self._projected = CONNECTED
        self.esmtp = False
        self.authenticated = False
        self._eof = False
        self._encoder: BodyEncoder | None = None
        self._body_octets = 0
        self._closed_reason = ""
        self._set_capabilities(Capabilities())

    def _set_capabilities(self, capabilities: Capabilities) -> None:
        self.capabilities = capabilities
        # Looked up for every message: kept as plain attributes.
        self._pipelining = "PIPELINING" in capabilities
        self._dsn = "DSN" in capabilities
        self._smtputf8 = "SMTPUTF8" in capabilities
        self._8bitmime = "8BITMIME" in capabilities
        self._size = "SIZE" in capabilities
        params = capabilities.get("SIZE")
        value = params[0] if params else ""
        # "SIZE" alone or "SIZE 0" announces no limit (RFC 1870 section 4).
        self._max_size = int(value) if value.isdigit() and int(value) > 0 else None

    # ------------------------------------------------------------------ queries

    @property
    def pending(self) -> int:
        """How many replies are still owed by the server."""
        return len(self._pending)

    @property
    def pipelining(self) -> bool:
        """Whether the server offers PIPELINING (RFC 2920): MAIL, RCPT and DATA go at once."""
        return self._pipelining

    @property
    def max_size(self) -> int | None:
        """The server's SIZE limit in octets, or None when it declares none (or "SIZE 0")."""
        return self._max_size

    @property
    def auth_mechanisms(self) -> list[str]:
        """The AUTH mechanisms the server offers (upper-case), in its order."""
        return list(self.capabilities.get("AUTH", ()))

    @property
    def closed_reason(self) -> str:
        """Why the session is closed ("" while it is open)."""
        if self.state is not CLOSED:
            return ""
        return self._closed_reason or "the session is closed"

    @property
    def body_octets(self) -> int:
        """Octets of the current or last message body, normalised, before dot-stuffing."""
        return self._body_octets

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes) -> None:
        """Bytes from the server; ``b""`` means the server closed the connection."""
        if not data:
            self._eof = True
            return
        self._parser.feed(data)

    def next_reply(self) -> "Response | None":
        """The reply to the oldest pending command, or None when more bytes are needed.

        Raises ``SMTPServerDisconnected`` when the connection ended first and
        ``SMTPProtocolError`` when the server sent something malformed; both
        close the session.
        """
        pending = self._pending
        if not pending:
            raise LocalProtocolError("no reply is due: no command is waiting for one")
        try:
            reply = self._parser.next_reply()
        except SMTPProtocolError as exc:
            self._close(str(exc))
            raise
        if reply is None:
            if self._eof:
                where = " in the middle of a reply" if self._parser.buffered else ""
                verb = pending[0].verb
                self._close(f"the server closed the connection{where}")
                raise SMTPServerDisconnected(
                    f"the server closed the connection{where} (waiting for the reply to {verb})"
                )
            return None
        # What _on_reply would do, inline: this runs for every reply.
        kind = type(pending.pop(0))
        code = reply.code
        before = self.state
        success, on_success, on_failure = _TRANSITIONS[kind]
        ok = code in success
        if code == 421:
            state = CLOSED
        else:
            state = (on_success if ok else on_failure) or before
            if kind is Rset and before is CONNECTED and ok:
                state = before
        self.state = state
        if state is CLOSED:
            if kind is Rset and code != 421:
                self._closed_reason = f"RSET was refused ({reply}); the session cannot be reused"
            else:
                self._closed_reason = f"the server said: {reply}"
            pending.clear()
            self._projected = CLOSED
            return reply
        if kind in _REPLY_HOOKS:
            self._on_reply_hooks(kind, reply)
        if not pending:
            self._projected = state
        elif not ok and state is not _advance(before, kind, None):
            # Not what was assumed when later commands were checked:
            # recompute where the still pending commands lead from here.
            projected: State = state
            for later in pending:
                projected = _advance(projected, type(later), None)
            self._projected = projected
        return reply

    def _on_reply_hooks(self, kind: "type[Command]", reply: "Response") -> None:
        """What a reply to EHLO, HELO, AUTH or STARTTLS changes besides the state."""
        if kind is Ehlo:
            if reply.success:
                self._set_capabilities(reply.capabilities)
                self.esmtp = True
        elif kind is Helo:
            if reply.success:
                self._set_capabilities(Capabilities())
                self.esmtp = False
        elif kind is Auth or kind is AuthResponse:
            if reply.success:
                self.authenticated = True
        elif reply.code == 220 and self._parser.buffered:  # StartTLS
            # Whatever follows the 220 was sent in plaintext before the
            # handshake: an attacker's injection (CVE-2011-0411 in reverse).
            # It is dropped here and again in tls_started().
            self._parser.clear()

    def _close(self, reason: str) -> None:
        self.state = CLOSED
        self._projected = CLOSED
        self._pending.clear()
        self._encoder = None
        if not self._closed_reason:
            self._closed_reason = reason

    def connection_lost(self, reason: str) -> None:
        """The caller's transport failed (I/O error, timeout): the session is over."""
        self._close(reason)

    # ------------------------------------------------------------------ sending

    def encode(self, command: Command) -> bytes:
        """The wire bytes of ``command``, checked, without changing any state.

        Raises ValueError for a forbidden character or a malformed argument,
        SMTPUnsupportedCommand for an extension the server did not offer and
        SMTPMessageTooLarge for a message over the server's SIZE limit.
        """
        kind = type(command)
        simple = _SIMPLE_LINES.get(kind)
        if simple is not None:
            return simple
        render = _RENDER.get(kind)
        if render is None:
            raise LocalProtocolError(f"not a command that can be sent: {command!r}")
        line = render(self, command)
        # Belt and braces: whatever built the line, no control character leaves.
        # (A printable line has none: one C call in the common case.)
        if not line.isprintable():
            check_argument(line, f"{command.verb} command")
        # UTF-8 is ASCII for an ASCII line.
        return (line + "\r\n").encode()

    def _hello_line(self, command: Ehlo | Helo) -> str:
        domain = check_argument(command.domain, f"{command.verb} name")
        if not domain or not domain.isascii() or " " in domain:
            raise ValueError(
                f"{command.verb} name must be a non-empty ASCII domain or address "
                f"literal without spaces: {domain!r}"
            )
        return f"{command.verb} {domain}"

    def _auth_line(self, command: Auth) -> str:
        mechanism = check_argument(command.mechanism, "AUTH mechanism").upper()
        if not mechanism or not mechanism.isascii() or " " in mechanism:
            raise ValueError(f"not an AUTH mechanism name: {mechanism!r}")
        if command.initial is None:
            return f"AUTH {mechanism}"
        # RFC 4954 section 4: an empty initial response is sent as "=".
        return f"AUTH {mechanism} {_b64(command.initial) or '='}"

    def _auth_response_line(self, command: AuthResponse) -> str:
        return _b64(command.data)

    def _check_utf8(self, address: "Address", what: str) -> None:
        if not self._smtputf8 and address.needs_smtputf8():
            raise SMTPUnsupportedCommand(
                f"the {what} address {address.address!r} is not ASCII and the server "
                "does not offer SMTPUTF8"
            )

    def _parameters(self, address: "Address") -> dict[str, str | None]:
        if not address.parameters:
            return {}
        params = dict(address.parameters)
        if not self._dsn:
            # RFC 3461 parameters are an extension: a server that did not offer
            # DSN would refuse the whole command for them.
            for key in DSN_PARAMETERS:
                params.pop(key, None)
        return params

    def _mail_line(self, command: Mail) -> str:
        sender = command.sender
        address = sender.address
        if not address.isascii():
            self._check_utf8(sender, "sender")
        size = command.size
        if size is not None:
            limit = self._max_size
            if limit is not None and size > limit:
                raise SMTPMessageTooLarge(
                    f"the message is {size} octets and the server accepts at most {limit}"
                )
        if not sender.parameters:
            # The common case, without the dictionary: the same parameters in
            # the same order as below.
            text = ""
            if size is not None and self._size:
                text = f" SIZE={size}"
            if command.eightbit and self._8bitmime:
                text += " BODY=8BITMIME"
            if command.smtputf8 or not address.isascii():
                if not self._smtputf8:
                    raise SMTPUnsupportedCommand(
                        "an address needs SMTPUTF8 (RFC 6531) and the server does not offer it"
                    )
                text += " SMTPUTF8"
            return f"MAIL FROM:<{address}>{text}"
        params = self._parameters(sender)
        if size is not None and self._size:
            params.setdefault("SIZE", str(size))
        if command.eightbit and self._8bitmime:
            params.setdefault("BODY", "8BITMIME")
        if command.smtputf8 or not address.isascii() or "SMTPUTF8" in params:
            if not self._smtputf8:
                raise SMTPUnsupportedCommand(
                    "an address needs SMTPUTF8 (RFC 6531) and the server does not offer it"
                )
            params.setdefault("SMTPUTF8", None)
        text = "".join(" " + format_parameter(k, v) for k, v in params.items())
        return f"MAIL FROM:<{address}>{text}"

    def _rcpt_line(self, command: Rcpt) -> str:
        recipient = command.recipient
        address = recipient.address
        if not address:
            raise ValueError("a recipient address cannot be empty")
        if not address.isascii():
            self._check_utf8(recipient, "recipient")
        if not recipient.parameters:
            return f"RCPT TO:<{address}>"
        params = self._parameters(recipient)
        text = "".join(" " + format_parameter(k, v) for k, v in params.items())
        return f"RCPT TO:<{address}>{text}"

    def _check_open(self) -> None:
        if self.state is CLOSED or self._projected is CLOSED:
            reason = self._closed_reason or "the session is closed"
            raise SMTPServerDisconnected(f"the SMTP session is closed: {reason}")

    def send(self, command: Command) -> bytes:
        """Check ``command`` against the state, then return its bytes and await its reply."""
        return self.send_many((command,))

    def send_many(self, commands: "Sequence[Command]") -> bytes:
        """The bytes of several commands for one write: all of them are queued, or none.

        Every command is checked (arguments, extensions, the state each one
        would meet) before any is queued, so a refusal leaves the session as
        it was. More than one command, or any while replies are due, needs
        PIPELINING.
        """
        if self.state is CLOSED or self._projected is CLOSED:
            self._check_open()
        projected = self._projected
        pending = self._pending
        waiting = bool(pending)
        for command in commands:
            kind = type(command)
            allowed = _ALLOWED.get(kind)
            if allowed is None:
                raise LocalProtocolError(f"not a command that can be sent: {command!r}")
            if waiting:
                if kind in _NOT_PIPELINABLE:
                    raise LocalProtocolError(
                        f"{command.verb} must wait for the replies to the commands before it"
                    )
                if not self._pipelining:
                    raise LocalProtocolError(
                        f"{command.verb} sent before the previous reply arrived, and the "
                        "server does not offer PIPELINING"
                    )
            if projected not in allowed:
                raise LocalProtocolError(
                    f"{command.verb} is not allowed now (session state: {projected.value})"
                )
            # _advance(projected, kind, None), inline: where success leads.
            after = _TRANSITIONS[kind][1]
            if after is not None and (kind is not Rset or projected is not CONNECTED):
                projected = after
            waiting = True
        if len(commands) == 1:
            data = self.encode(commands[0])
        else:
            parts = []
            for command in commands:
                # encode(), without the call for a command without arguments.
                simple = _SIMPLE_LINES.get(type(command))
                parts.append(self.encode(command) if simple is None else simple)
            data = b"".join(parts)
        if not pending and self._parser.buffered:
            self._check_unsolicited()
        pending.extend(commands)
        self._projected = projected
        return data

    def _check_unsolicited(self) -> None:
        # Bytes nobody asked for would be taken as the reply to this command.
        # Only a 421 may come unasked (RFC 5321 section 3.8): it then answers
        # this command and closes the session.
        if self._parser.peek_status() == b"421":
            return
        self._close("the server sent a reply nobody asked for")
        raise SMTPProtocolError("the server sent a reply nobody asked for; the session is closed")

    def tls_started(self) -> None:
        """The caller completed the TLS handshake after a 220 to STARTTLS.

        Everything received before it is dropped, and the capabilities are
        forgotten: RFC 3207 section 4.2 says EHLO must be sent again and
        nothing learnt in plaintext be trusted.
        """
        if self.state is not TLS:
            raise LocalProtocolError("tls_started() without a 220 reply to STARTTLS")
        self._parser.clear()
        self._set_capabilities(Capabilities())
        self.esmtp = False
        self.state = self._projected = CONNECTED

    # ------------------------------------------------------------------ the body

    def _check_body(self, what: str) -> None:
        if self.state is not BODY or self._pending:
            self._check_open()
            raise LocalProtocolError(f"{what} only after a 354 reply to DATA")

    def send_body(self, data: bytes | bytearray | memoryview) -> bytes:
        """Wire bytes for a piece of the message: line ends normalised, leading dots doubled."""
        if self.state is not BODY or self._pending:
            self._check_body("message data may be sent")
        if self._encoder is None:
            self._encoder = BodyEncoder()
        return self._encoder.feed(data)

    def end_body(self) -> bytes:
        """The rest of the message, a final CRLF if it lacks one, and the "." line."""
        if self.state is not BODY or self._pending:
            self._check_body("the message can be ended")
        encoder = self._encoder or BodyEncoder()
        self._encoder = None
        tail = encoder.finish()
        self._body_octets = encoder.size
        self._pending.append(_END)
        self._projected = READY
        return tail + _END_OF_DATA

    def send_whole_body(self, data: bytes, *, normalised: bool = False) -> bytes:
        """``send_body(data) + end_body()`` for a message held whole in memory, in one step.

        The same bytes, made with a few calls over the whole message instead
        of the streaming encoder: the path of every small message. With
        ``normalised``, ``data`` is already ``encoder.normalise``'s output (the
        client measured the message that way) and is not scanned again.
        """
        if self.state is not BODY or self._pending or self._encoder is not None:
            return self.send_body(data) + self.end_body()
        wire = data if normalised else normalise(data)
        self._body_octets = len(wire)
        if wire[:1] == b".":
            wire = b"." + wire
        self._pending.append(_END)
        self._projected = READY
        return wire.replace(b"\r\n.", b"\r\n..") + _END_OF_DATA


# The commands whose reply changes more than the state (see _on_reply).
_REPLY_HOOKS = frozenset({Ehlo, Helo, Auth, AuthResponse, StartTLS})

# How each command with arguments becomes its line (without CRLF).
_RENDER: "dict[type[Command], Callable[[ClientProtocol, Any], str]]" = {
    Mail: ClientProtocol._mail_line,
    Rcpt: ClientProtocol._rcpt_line,
    Ehlo: ClientProtocol._hello_line,
    Helo: ClientProtocol._hello_line,
    Auth: ClientProtocol._auth_line,
    AuthResponse: ClientProtocol._auth_response_line,
}
