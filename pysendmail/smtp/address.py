"""Envelope addresses with their ESMTP parameters, and the checks every command argument passes.

An ``Address`` is what goes between the angle brackets of MAIL FROM or RCPT TO,
plus the parameters that follow it (``SMTPUTF8``, ``BODY=8BITMIME``, the DSN
parameters of RFC 3461), so each recipient can carry its own. ``str(addr)`` is
the exact argument text: ``<a@b> NOTIFY=SUCCESS ORCPT=rfc822;a@b``.

SECURITY: everything here ends up on a command line sent to a server. A CR or
LF would let a caller (or whoever controls the caller's input) inject a whole
command, and other control characters confuse servers and logs, so every C0
control character and DEL is refused with ``ValueError`` before anything is
sent (``check_argument``), as are angle brackets and white space in a mailbox
and anything outside the RFC 5321 grammar in a parameter. ENVID and ORCPT carry
free text and are therefore xtext-encoded (RFC 3461 section 4) on the way out,
never sent raw.

This module never rewrites an address: what the caller gave is what is sent,
or it is refused. It imports only the standard library.
"""

# No ``re`` and no ``from __future__``: this module is imported by every
# ``sendmail`` that relays directly, where those imports would cost more than
# the SMTP dialogue. The grammar checks below are written with ``str``
# methods, each with the regular expression it implements in a comment.

__all__ = [
    "DSN_PARAMETERS",
    "Address",
    "check_argument",
    "coerce",
    "format_parameter",
    "xtext_decode",
    "xtext_encode",
]

#: The RFC 3461 parameters: sent only when the server offers DSN.
DSN_PARAMETERS: frozenset[str] = frozenset({"NOTIFY", "RET", "ENVID", "ORCPT"})

# [\x00-\x1f\x7f]: C0 controls and DEL.
_CONTROLS = frozenset(map(chr, (*range(0x20), 0x7F)))
# RFC 5322 atext: what an ORCPT addr-type ("rfc822", "utf-8") may hold.
_ATEXT = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+/=?^_`{|}~-"
)
_HEX_UPPER = frozenset("0123456789ABCDEF")
_NOTIFY_WORDS = frozenset({"SUCCESS", "FAILURE", "DELAY"})
# Parameters whose values are free text, xtext-encoded when formatted.
_XTEXT_PARAMETERS = frozenset({"ENVID", "ORCPT"})


def _has_control(value: str) -> bool:
    # A printable string has none (the common case, one C call); otherwise look.
    return not value.isprintable() and not _CONTROLS.isdisjoint(value)


def _mailbox_forbidden(address: str) -> bool:
    """``[<>\\s]``: an angle bracket or any white space (``str.isspace``, as ``\\s``)."""
    if "<" in address or ">" in address or " " in address:
        return True
    # Of all white space, only " " is printable.
    return not address.isprintable() and any(c.isspace() for c in address)


def _is_keyword(key: str) -> bool:
    """RFC 5321 esmtp-keyword: ``[A-Za-z0-9][A-Za-z0-9-]*``."""
    return key.isascii() and key[:1].isalnum() and key.replace("-", "").isalnum()


def _is_value(value: str) -> bool:
    """RFC 5321 esmtp-value: ``[\\x21-\\x3c\\x3e-\\x7e]+`` (printable ASCII but space and "=")."""
    return (
        value.isascii()
        and value.isprintable()
        and value != ""
        and " " not in value
        and "=" not in value
    )


def _is_xtext(value: str) -> bool:
    """RFC 3461 xtext: ``(?:[\\x21-\\x2a\\x2c-\\x3c\\x3e-\\x7e]|\\+[0-9A-F]{2})*``."""
    if not value.isascii() or (value and not value.isprintable()) or " " in value or "=" in value:
        return False
    parts = value.split("+")
    return all(len(part) >= 2 and _HEX_UPPER.issuperset(part[:2]) for part in parts[1:])


def check_argument(value: str, what: str) -> str:
    """``value`` unchanged, or ValueError when it holds a C0 control character or DEL.

    ``what`` names the argument in the message ("HELO name", "AUTH user").
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str, not {type(value).__name__}")
    if _has_control(value):
        raise ValueError(f"{what} contains a control character: {value!r}")
    return value


def xtext_encode(value: str) -> str:
    """RFC 3461 xtext of the UTF-8 bytes of ``value``.

    "+", "=" and every octet outside 0x21-0x7E become "+XX" (upper-case hex).
    """
    return "".join(_XTEXT_TABLE[octet] for octet in value.encode("utf-8"))


_XTEXT_TABLE = tuple(
    chr(octet) if 0x21 <= octet <= 0x7E and octet not in (0x2B, 0x3D) else f"+{octet:02X}"
    for octet in range(256)
)


def xtext_decode(value: str) -> str:
    """The text that ``xtext_encode`` turned into ``value``; ValueError when it is not xtext.

    Strict, as RFC 3461 writes it: "+" takes two upper-case hex digits, and
    "=", space, control and non-ASCII characters may not appear raw.
    """
    if not isinstance(value, str):
        raise TypeError(f"xtext must be str, not {type(value).__name__}")
    if not _is_xtext(value):
        raise ValueError(f"not valid xtext: {value!r}")
    if "+" not in value:
        return value
    parts = value.split("+")
    raw = bytearray(parts[0].encode("ascii"))
    for part in parts[1:]:
        raw.append(int(part[:2], 16))
        raw += part[2:].encode("ascii")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"xtext does not decode to UTF-8 text: {value!r}") from None


def format_parameter(key: str, value: str | None) -> str:
    """One parameter as it goes on the wire: "KEY" or "KEY=VALUE".

    ENVID values are xtext-encoded. An ORCPT value "type;address" keeps its
    addr-type and has the address xtext-encoded; a value without ";" is taken
    as an RFC 822 address and gets "rfc822;" in front.
    """
    key = key.upper()
    if value is None:
        return key
    if key == "ENVID":
        return f"{key}={xtext_encode(value)}"
    if key == "ORCPT":
        addr_type, sep, original = value.partition(";")
        if not sep:
            addr_type, original = "rfc822", value
        return f"{key}={addr_type};{xtext_encode(original)}"
    return f"{key}={value}"


def _check_parameter(key: str, value: str | None) -> None:
    what = f"parameter {key}"
    check_argument(key, "parameter keyword")
    if not _is_keyword(key):
        raise ValueError(f"not an ESMTP parameter keyword: {key!r}")
    if value is None:
        return
    check_argument(value, what)
    if key in _XTEXT_PARAMETERS:
        if not value:
            raise ValueError(f"{what} has an empty value")
        if key == "ORCPT":
            addr_type, sep, original = value.partition(";")
            if sep and not (addr_type and _ATEXT.issuperset(addr_type)):
                raise ValueError(f"ORCPT address type is not an atom: {addr_type!r}")
            if sep and not original:
                raise ValueError(f"ORCPT has no address after {addr_type!r};")
        return
    if not _is_value(value):
        raise ValueError(f"{what} value must be printable ASCII without space or '=': {value!r}")
    # Values the server would refuse only after MAIL was sent: caught here,
    # where the caller can see which address carried them.
    if key == "RET" and value.upper() not in ("FULL", "HDRS"):
        raise ValueError(f"RET must be FULL or HDRS, not {value!r}")
    if key == "NOTIFY":
        words = value.upper().split(",")
        if words != ["NEVER"] and not set(words) <= _NOTIFY_WORDS:
            raise ValueError(
                f"NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY, not {value!r}"
            )


class Address:
    """An envelope address with its ESMTP parameters.

    ``Address("a@b", "SMTPUTF8", "BODY=8BITMIME", notify="SUCCESS,FAILURE",
    orcpt="rfc822;a@b")``: positional parameters are "KEY" or "KEY=VALUE";
    keyword names are upper-cased and "_" becomes "-"; a keyword given None is
    a bare keyword. A later parameter with the same keyword replaces an earlier
    one. ``address`` is the bare mailbox, "" for the null sender.
    """

    __slots__ = ("address", "parameters")

    address: str
    parameters: dict[str, str | None]

    def __init__(self, address: str, *params: str, **kwparams: str | None) -> None:
        check_argument(address, "address")
        if _mailbox_forbidden(address):
            raise ValueError(
                f"an address may not hold '<', '>' or white space (give it bare): {address!r}"
            )
        self.address = address
        self.parameters = {}
        self._add(params, kwparams)

    def _add(self, params: tuple[str, ...], kwparams: dict[str, str | None]) -> None:
        for param in params:
            check_argument(param, "parameter")
            key, sep, value = param.partition("=")
            self._set(key, value if sep else None)
        for name, kwvalue in kwparams.items():
            if kwvalue is not None and not isinstance(kwvalue, str):
                raise TypeError(
                    f"parameter {name} must be str or None, not {type(kwvalue).__name__}"
                )
            self._set(name.replace("_", "-"), kwvalue)

    def _set(self, key: str, value: str | None) -> None:
        key = key.upper()
        _check_parameter(key, value)
        self.parameters[key] = value

    def with_parameters(self, *params: str, **kwparams: str | None) -> "Address":
        """A copy with more parameters; a keyword already present takes the new value."""
        copy = Address(self.address)
        copy.parameters = dict(self.parameters)
        copy._add(params, kwparams)
        return copy

    def needs_smtputf8(self) -> bool:
        """Whether the mailbox has non-ASCII characters, so MAIL needs SMTPUTF8 (RFC 6531)."""
        return not self.address.isascii()

    def __str__(self) -> str:
        text = f"<{self.address}>"
        if self.parameters:
            text += "".join(" " + format_parameter(k, v) for k, v in self.parameters.items())
        return text

    def __repr__(self) -> str:
        args = [repr(self.address)]
        args += [repr(k if v is None else f"{k}={v}") for k, v in self.parameters.items()]
        return f"Address({', '.join(args)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Address):
            return NotImplemented
        return self.address == other.address and self.parameters == other.parameters

    def __hash__(self) -> int:
        return hash((self.address, frozenset(self.parameters.items())))


def coerce(addr: str | Address) -> Address:
    """``addr`` as an Address: a str is checked and wrapped, an Address is returned as it is."""
    if isinstance(addr, Address):
        return addr
    if isinstance(addr, str):
        return Address(addr)
    raise TypeError(f"an address must be str or Address, not {type(addr).__name__}")
