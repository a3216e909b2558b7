"""Mail addresses: RFC 5322 address lists in headers, RFC 5321 mailboxes in envelopes.

Two jobs, kept apart on purpose:

* ``parse_address_list`` reads what people and mail programs write in To, Cc,
  Bcc and From (display names, comments, quoted strings, groups such as
  ``undisclosed-recipients:;``, angle addresses, obsolete source routes, folded
  lines) and returns the addr-specs in it. A bare word (``root``, even
  ``-oi``) is an address too: bsd-mailx writes such words into To.
* ``check_mailbox`` decides whether one address may go into MAIL FROM or RCPT
  TO: RFC 5321 ``Mailbox`` syntax, with UTF-8 allowed where RFC 6531 allows it.

SECURITY: headers, argv and the aliases file are hostile input. Any control
character (C0, DEL, C1) anywhere in an address, a display name or a comment is
refused with ``DataError``; the only line breaks accepted are header folding
(CRLF or LF followed by white space). Malformed input of any shape raises
``DataError`` and nothing else, with the offending text shown through
``repr`` so that it cannot forge a log line.

This module never rewrites an address: what was written is returned or
refused, apart from dropping the comments and folding white space that are not
part of the address. Nothing here may import more than ``pysendmail.errors``:
it is on the ``sendmail`` hot path, so the scanners are hand written instead
of regular expressions.
"""

from pysendmail.errors import DataError

#: RFC 5322 atext in US-ASCII; every non-ASCII character counts as atext too
#: (RFC 6532), once control characters and invalid UTF-8 have been refused.
_ATEXT = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
_LDH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_HEX = frozenset("0123456789abcdefABCDEF")
# Characters that end an atom in a header: the RFC 5322 specials and white space.
_ATOM_END = frozenset(' \t\r\n()<>[]:;@\\,."')
_SHOW_MAX = 80

#: Mailbox length limits of RFC 5321 section 4.5.3.1 (octets).
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_LABEL = 63


def show(value: str, limit: int = _SHOW_MAX) -> str:
    """``repr`` of a hostile value, shortened, for one-line error messages."""
    if len(value) > limit:
        return repr(value[:limit]) + "..."
    return repr(value)


def find_control(value: str) -> str | None:
    """The first control character (C0, DEL or C1) in ``value``, or ``None``."""
    if value.isascii() and value.isprintable():
        # The common case, decided in C: printable ASCII has no control character.
        return None
    for c in value:
        if c < " " or "\x7f" <= c <= "\x9f":
            return c
    return None


def check_text(value: str, what: str) -> str:
    """Refuse control characters and invalid UTF-8 in a name or flag value; return it."""
    c = find_control(value)
    if c is not None:
        raise DataError(f"{what} {show(value)} contains the control character {c!r}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # argv and headers are decoded with surrogateescape: undecodable
            # bytes show up here as lone surrogates.
            raise DataError(f"{what} {show(value)} is not valid UTF-8") from None
    return value


# --------------------------------------------------------------------------- header syntax

# A token is (kind, text, start, end): kind is "a" (atom), "q" (quoted string,
# quotes included), "l" (domain literal, brackets included) or the special
# character itself; start and end index the value, for span rewriting.
_Token = tuple[str, str, int, int]


def _line_break(value: str, i: int) -> int:
    """Skip a folding line break at ``i``; refuse any other CR or LF."""
    n = len(value)
    if value[i] == "\r":
        if i + 1 >= n or value[i + 1] != "\n":
            raise DataError(f"bare CR in {show(value)}")
        i += 2
    else:
        i += 1
    if i < n and value[i] not in " \t":
        raise DataError(f"line break not followed by white space in {show(value)}")
    return i


def _control(value: str, c: str) -> DataError:
    return DataError(f"control character {c!r} in {show(value)}")


def _skip_comment(value: str, i: int) -> int:
    n = len(value)
    depth = 0
    while i < n:
        c = value[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        elif c == "\\":
            i += 1
            if i < n and value[i] != "\t" and find_control(value[i]):
                raise _control(value, value[i])
        elif c in "\r\n":
            i = _line_break(value, i)
            continue
        elif c != "\t" and (c < " " or "\x7f" <= c <= "\x9f"):
            raise _control(value, c)
        i += 1
    raise DataError(f"unterminated comment (missing ')') in {show(value)}")


def _delimited(value: str, i: int, close: str, what: str) -> tuple[str, int]:
    """A quoted string or domain literal from ``value[i]`` to ``close``, folding removed."""
    n = len(value)
    parts: list[str] = []
    start = i
    i += 1
    while i < n:
        c = value[i]
        if c == close:
            parts.append(value[start : i + 1])
            return "".join(parts), i + 1
        if c == "\\":
            if i + 1 >= n:
                break
            d = value[i + 1]
            if d != "\t" and find_control(d):
                raise _control(value, d)
            i += 2
            continue
        if c in "\r\n":
            # Unfolding removes the line break and keeps the white space.
            parts.append(value[start:i])
            i = _line_break(value, i)
            start = i
            continue
        if c != "\t" and (c < " " or "\x7f" <= c <= "\x9f"):
            raise _control(value, c)
        if close == "]" and c == "[":
            raise DataError(f"'[' inside a domain literal in {show(value)}")
        i += 1
    raise DataError(f"unterminated {what} (missing {close!r}) in {show(value)}")


def _tokenize(value: str) -> list[_Token]:
    tokens: list[_Token] = []
    append = tokens.append
    n = len(value)
    i = 0
    while i < n:
        c = value[i]
        if c in " \t":
            i += 1
        elif c in "\r\n":
            i = _line_break(value, i)
        elif c == "(":
            i = _skip_comment(value, i)
        elif c == '"':
            start = i
            text, i = _delimited(value, i, '"', "quoted string")
            append(("q", text, start, i))
        elif c == "[":
            start = i
            text, i = _delimited(value, i, "]", "domain literal")
            append(("l", text, start, i))
        elif c in "<>@,:;.":
            append((c, c, i, i + 1))
            i += 1
        elif c in ")]\\":
            raise DataError(f"unexpected {c!r} in {show(value)}")
        elif c < " " or "\x7f" <= c <= "\x9f":
            raise _control(value, c)
        else:
            j = i + 1
            while j < n:
                d = value[j]
                if d in _ATOM_END or d < " " or "\x7f" <= d <= "\x9f":
                    break
                j += 1
            append(("a", value[i:j], i, j))
            i = j
    return tokens


def _addr_spec(value: str, tokens: list[_Token], a: int, b: int) -> tuple[str, int, int]:
    """The addr-spec made of ``tokens[a:b]``, with its span in ``value``."""
    at = -1
    for k in range(a, b):
        if tokens[k][0] == "@":
            if at >= 0:
                raise DataError(
                    f"more than one '@' in one address (is a ',' missing?) in {show(value)}"
                )
            at = k
    end_local = at if at >= 0 else b
    parts: list[str] = []
    previous = ""
    for k in range(a, end_local):
        kind, text = tokens[k][0], tokens[k][1]
        if kind == "l":
            raise DataError(f"domain literal in a local part in {show(value)}")
        if kind in "aq" and previous in ("a", "q"):
            raise DataError(
                f"{show(value)} is not an address: words separated by spaces"
                " (put the address in <...> after a name, and commas between addresses)"
            )
        parts.append(text)
        previous = kind
    if not parts:
        raise DataError(f"address without a local part in {show(value)}")
    if at >= 0:
        parts.append("@")
        domain: list[str] = []
        previous = ""
        for k in range(at + 1, b):
            kind, text = tokens[k][0], tokens[k][1]
            if kind == "q" or (kind in "al" and previous in ("a", "l")):
                raise DataError(f"malformed domain in {show(value)}")
            domain.append(text)
            previous = kind
        if not domain:
            raise DataError(f"no domain after '@' in {show(value)}")
        parts.extend(domain)
    return "".join(parts), tokens[a][2], tokens[b - 1][3]


def mailbox_spans(value: str) -> list[tuple[str, int, int]]:
    """Each addr-spec of an address-list header value with its span in ``value``.

    The span covers the addr-spec as written (for ``a . b @ c`` all of it), so a
    caller that must rewrite a header (masquerading) can replace just the
    address and keep display names, comments and folding as the client wrote
    them.
    """
    tokens = _tokenize(value)
    found: list[tuple[str, int, int]] = []
    n = len(tokens)
    i = 0
    in_group = False
    while i < n:
        j = i
        while j < n and tokens[j][0] not in "<>:;,":
            j += 1
        stop = tokens[j][0] if j < n else ""
        if stop == "<":
            # Anything before "<" is a display name; broken mailers write an
            # unquoted address or dots there, and it is never used for routing.
            k = j + 1
            if k < n and tokens[k][0] == "@":
                # obs-route "<@a,@b:user@c>": the route is dropped (RFC 5321 C).
                while k < n and tokens[k][0] != ":":
                    if tokens[k][0] in "<>;":
                        raise DataError(f"malformed source route in {show(value)}")
                    k += 1
                if k == n:
                    raise DataError(f"malformed source route in {show(value)}")
                k += 1
            m = k
            while m < n and tokens[m][0] != ">":
                if tokens[m][0] in "<,:;":
                    raise DataError(f"unexpected {tokens[m][1]!r} inside <...> in {show(value)}")
                m += 1
            if m == n:
                raise DataError(f"missing '>' in {show(value)}")
            if m == k:
                raise DataError(f"empty address <> in {show(value)}")
            found.append(_addr_spec(value, tokens, k, m))
            i = m + 1
        elif stop == ":":
            if in_group:
                raise DataError(f"a group inside a group in {show(value)}")
            if j == i:
                raise DataError(f"unexpected ':' in {show(value)}")
            in_group = True
            i = j + 1
            continue
        elif stop == ">":
            raise DataError(f"'>' without '<' in {show(value)}")
        else:
            if j > i:
                found.append(_addr_spec(value, tokens, i, j))
            i = j
        if i < n:
            kind = tokens[i][0]
            if kind == ",":
                i += 1
            elif kind == ";":
                if not in_group:
                    raise DataError(f"';' outside a group in {show(value)}")
                in_group = False
                i += 1
                if i < n:
                    if tokens[i][0] != ",":
                        raise DataError(f"missing ',' after a group in {show(value)}")
                    i += 1
            else:
                raise DataError(f"missing ',' before {tokens[i][1]!r} in {show(value)}")
    # A group left open at the end (no ';') is accepted: nothing is lost by it.
    return found


def parse_address_list(value: str) -> list[str]:
    """The addr-specs of an RFC 5322 address-list (a To, Cc, Bcc or From value).

    Display names, comments and groups are dropped; a bare local name such as
    ``root`` is returned as it is (the caller qualifies it). Raises
    ``DataError`` for anything that is not an address list.
    """
    return [spec for spec, _start, _end in mailbox_spans(value)]


# --------------------------------------------------------------------------- RFC 5321 mailbox


def _atext(c: str) -> bool:
    return c in _ATEXT or c >= "\x80"


def is_dot_atom(text: str) -> bool:
    """Whether ``text`` is an RFC 5322/6532 dot-atom (a local part that needs no quotes)."""
    if not text:
        return False
    for label in text.split("."):
        if not label:
            return False
        for c in label:
            if not _atext(c):
                return False
    return find_control(text) is None


def quote_local_part(text: str) -> str:
    """``text`` as a local part: itself when it is a dot-atom, else a quoted string."""
    if is_dot_atom(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _quoted_end(addr: str) -> int:
    """Index just after the closing quote of a quoted local part, or -1."""
    i = 1
    n = len(addr)
    while i < n:
        c = addr[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    return -1


def _local_problem(local: str) -> str | None:
    if local[0] == '"':
        inner = local[1:-1]
        i = 0
        while i < len(inner):
            c = inner[i]
            # The caller cut the local part at the first unescaped quote, so
            # only a backslash can be wrong here.
            if c == "\\":
                if i + 1 >= len(inner) or not " " <= inner[i + 1] <= "~":
                    return "a backslash in the quoted local part escapes nothing printable"
                i += 2
                continue
            i += 1
        return None
    for label in local.split("."):
        if not label:
            return "the local part has an empty label (a leading, trailing or double dot)"
        for c in label:
            if not _atext(c):
                return f"{c!r} is not allowed in a local part without quotes"
    return None


def _ipv4_ok(text: str) -> bool:
    parts = text.split(".")
    if len(parts) != 4:
        return False
    return all(1 <= len(p) <= 3 and p.isascii() and p.isdigit() and int(p) <= 255 for p in parts)


def _ipv6_ok(text: str) -> bool:
    if not text.isascii():
        return False
    limit = 8
    if "." in text:
        cut = text.rfind(":")
        if cut < 0 or not _ipv4_ok(text[cut + 1 :]):
            return False
        text = text[: cut + 1]
        # Keep "::" whole; drop the single ":" that only separated the IPv4 part.
        if not text.endswith("::"):
            text = text[:-1]
        limit = 6
    if "::" in text:
        if text.count("::") > 1:
            return False
        left, right = text.split("::")
        groups = (left.split(":") if left else []) + (right.split(":") if right else [])
        if len(groups) > limit - 1:
            return False
    else:
        groups = text.split(":")
        if len(groups) != limit:
            return False
    for g in groups:
        if not 1 <= len(g) <= 4:
            return False
        for c in g:
            if c not in _HEX:
                return False
    return True


def _domain_problem(domain: str) -> str | None:
    if not domain:
        return "no domain after '@'"
    if domain[0] == "[":
        if domain[-1] != "]" or len(domain) < 3:
            return "unterminated address literal"
        inner = domain[1:-1]
        if inner[:5].lower() == "ipv6:":
            return None if _ipv6_ok(inner[5:]) else "malformed IPv6 address literal"
        if _ipv4_ok(inner):
            return None
        return "the address literal is neither [IPv4] nor [IPv6:...]"
    if len(domain.encode("utf-8")) > MAX_DOMAIN:
        return f"the domain is longer than {MAX_DOMAIN} octets"
    for label in domain.split("."):
        if not label:
            return "the domain has an empty label (a leading, trailing or double dot)"
        if len(label.encode("utf-8")) > MAX_LABEL:
            return f"a domain label is longer than {MAX_LABEL} octets"
        if label[0] == "-" or label[-1] == "-":
            return "a domain label starts or ends with '-'"
        for c in label:
            if c not in _LDH and c < "\x80":
                return f"{c!r} is not allowed in a domain"
    return None


#: Addresses ``check_mailbox`` found good, bounded: a server sees the same few
#: senders and recipients again and again, and each is checked several times
#: on its way into the queue (the intake, the prelude, the commit's re-read).
_GOOD: dict[str, None] = {}
_GOOD_MAX = 4096


def check_mailbox(addr: str) -> str:
    """Check ``addr`` against RFC 5321 ``Mailbox`` (RFC 6531 UTF-8 allowed); return it.

    Accepts a dot-string or quoted-string local part, then ``@`` and a domain
    name, an ``[IPv4]`` literal or an ``[IPv6:...]`` literal. Raises
    ``DataError`` naming the address and what is wrong with it.
    """
    if addr in _GOOD:
        return addr
    _check_mailbox(addr)
    if len(_GOOD) >= _GOOD_MAX:
        _GOOD.clear()
    _GOOD[addr] = None
    return addr


def _check_mailbox(addr: str) -> None:
    check_text(addr, "address")
    if addr.startswith('"'):
        cut = _quoted_end(addr)
        if cut < 0:
            raise DataError(f"address {show(addr)}: unterminated quoted local part")
        if addr[cut : cut + 1] != "@":
            raise DataError(f"address {show(addr)} has no '@domain' after its local part")
    else:
        cut = addr.find("@")
        if cut < 0:
            raise DataError(f"address {show(addr)} has no domain: expected local-part@domain")
    local, domain = addr[:cut], addr[cut + 1 :]
    if not local:
        raise DataError(f"address {show(addr)} has an empty local part")
    problem = _local_problem(local)
    if problem is None and len(local.encode("utf-8")) > MAX_LOCAL_PART:
        problem = f"the local part is longer than {MAX_LOCAL_PART} octets"
    if problem is None:
        problem = _domain_problem(domain)
    if problem is not None:
        raise DataError(f"address {show(addr)}: {problem}")


def check_local_part(local: str) -> str:
    """Check a bare local name (``root``, ``"john doe"``) as RFC 5321 would; return it."""
    check_text(local, "local name")
    problem = None
    if not local:
        problem = "it is empty"
    elif local[0] == '"' and (len(local) < 2 or _quoted_end(local) != len(local)):
        problem = "unterminated quoted string"
    else:
        problem = _local_problem(local)
    if problem is None and len(local.encode("utf-8")) > MAX_LOCAL_PART:
        problem = f"it is longer than {MAX_LOCAL_PART} octets"
    if problem is not None:
        raise DataError(f"local name {show(local)}: {problem}")
    return local


def needs_smtputf8(addr: str) -> bool:
    """Whether ``addr`` can only travel with the SMTPUTF8 extension (RFC 6531)."""
    return not addr.isascii()


def split_address(addr: str) -> tuple[str, str | None]:
    """``(local part, domain)`` of an addr-spec; the domain is ``None`` for a bare name."""
    if addr.startswith('"'):
        cut = _quoted_end(addr)
        if cut > 0 and addr[cut : cut + 1] == "@":
            return addr[:cut], addr[cut + 1 :]
        return addr, None
    cut = addr.find("@")
    if cut < 0:
        return addr, None
    return addr[:cut], addr[cut + 1 :]
