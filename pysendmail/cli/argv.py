"""The sendmail command line: one flag table that turns argv into an ``Invocation``.

Every program that pipes mail into ``/usr/sbin/sendmail`` (PHP, cron, mailx,
s-nail, mutt, git send-email, sudo, logwatch) passes its own mix of flags, many
of them decades old. This module accepts all of them the way Postfix does
(``../shared/compat/FLAGS.md`` has the evidence), and returns a typed
``Invocation`` that says what to do; it does nothing itself.

What it must never do:

* import anything but ``os``, ``sys`` and ``pysendmail.errors`` at run time. It
  runs on every mail, and ``import typing`` alone costs more than the whole
  start-up budget;
* let the value of a flag become a recipient. ssmtp's parser does that
  (``-B 7BIT``, ``-h 5``, ``-O a=b`` became RCPT), which is how a drop-in
  silently mails the wrong people;
* accept a control character (C0, including TAB, CR and LF, or DEL) in a flag
  value or a recipient: they end up in SMTP commands and headers;
* print, exit or read stdin: errors are raised (``UsageError`` 64,
  ``DataError`` 65) with one line that names the flag, and the CLI reports them.

Parsing follows getopt with a leading ``+``, as Postfix, nullmailer and
sendmail itself do: options are read until ``--`` or the first word that is
not an option, and every later word is a recipient, even one that starts with
``-`` (``sendmail user@x -oi`` mails ``-oi`` too). msmtp's GNU getopt reorders
arguments and would still read that ``-oi`` as an option; we do not, because
the man pages of Postfix and sendmail tell callers that recipients follow the
options, and a recipient must never be mistaken for a flag. Single letters may
be clustered as getopt allows (``-ti``, ``-tfuser@x``): a letter that takes a
value consumes the rest of the word, or the next word when the rest is empty.

The flags (value: "-" none, "sep" attached or the next word, "att" attached only)::

    flag  value  effect                          notes
    -t    -      extract_recipients              header recipients are added to argv ones
    -i    -      dot_ends_input = False
    -v    -      verbose += 1                    -vv counts two
    -I    -      mode aliases                    like -bi
    -f    sep    sender                          last one wins; "" and "<>" are the null sender ""
    -r    sep    sender                          the old spelling of -f (msmtp rejects it)
    -F    sep    full_name
    -N    sep    dsn_notify                      NEVER, or SUCCESS,DELAY,FAILURE (any subset,
                                                 any case, commas or spaces between)
    -R    sep    dsn_ret                         FULL or HDRS
    -V    sep    dsn_envid                       not empty, at most 100 characters (RFC 3461)
    -B    sep    body_type                       7BIT or 8BITMIME, any case
    -C    sep    config_path                     not empty
    -b    sep    mode: m deliver, p list-queue, i aliases, v verify, s smtp; any other is 64
    -o    sep    -oi (any value starting "i", as Postfix) is -i; every other -o is ignored
    -q    att    bare: run-queue; -q<digit>...: nothing (exit 0 at once, as Postfix);
                 -qR<site>, -qI<id>, -qS<site>: run-queue, the filter ignored; others 64
    -A    sep    ignored; the value must be c or m
    -O -L -X -h -e -p
          sep    ignored
    -d    att    ignored (sendmail's -d0.1 debug; msmtp's -d takes no value, so a
                 separate word after a bare -d stays a recipient)
    -G -U -n -m -c -x
          -      ignored

Decisions where the issue was silent:

* ``-V`` always takes an envelope id, never Postfix 2.2's legacy VERP meaning:
  a bare ``-V`` at the end is a missing value (64), and an empty one too.
* ``-q`` never takes the next word, even bare (as in Postfix, where ``-q`` is
  "not getopt compatible"), so ``-q root`` is a queue run with a recipient: 64.
* ``-q<time>`` makes the whole invocation ``MODE_NOTHING`` whatever the other
  flags say, as Postfix exits 0 before looking at the mode; the other modes are
  last-one-wins, starting from the program name (``newaliases -bp`` lists).
* ``-t`` with a mode other than delivery (or nothing) is 64, as Postfix.
* ``-bv`` without a recipient is 64; a delivery without recipients and without
  ``-t`` is left to the caller, which owns the "no recipients" message.
* Empty words are skipped wherever they stand (``sendmail -t "$EXTRA"`` with
  EXTRA empty), except as the separate value of a flag (``-f ""``). getopt
  would end the options at an empty word, turning a later ``-t`` into a
  recipient ``-t@domain``; skipping it cannot misdeliver.
* A lone ``-`` is refused (64), since whoever wrote it meant stdin.
* ``-b`` and ``-A`` values must be exactly one known letter; Postfix looks only
  at the first character, which would accept ``-bmumble``.
* Recipient words are kept as written; splitting "a@x, b@x" and checking the
  RFC 5321 syntax is the intake's job.
"""

from pysendmail.errors import DataError, UsageError

# No ``from __future__`` and no ``typing`` at run time (see the module docstring).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

MODE_DELIVER = "deliver"
MODE_LIST_QUEUE = "list-queue"
MODE_ALIASES = "aliases"
MODE_VERIFY = "verify"
MODE_RUN_QUEUE = "run-queue"
MODE_SMTP = "smtp"
MODE_NOTHING = "nothing"

# How a letter gets its value.
_NONE = 0  # no value: -t
_SEPARATE = 1  # the rest of the word, else the next word: -fuser / -f user
_ATTACHED = 2  # only the rest of the word, possibly empty: -d0.1, -q30m, -q

# The flag table: letter -> how it takes its value. Postfix's getopt string is
# "A:B:C:F:GIL:N:O:R:UV:X:b:ce:f:h:imno:p:r:q:tvx"; -d is sendmail's (attached)
# and -q is special-cased by Postfix too. Whatever is missing here is 64.
_TABLE: "Final[dict[str, int]]" = {
    "t": _NONE,
    "i": _NONE,
    "v": _NONE,
    "I": _NONE,
    "G": _NONE,
    "U": _NONE,
    "n": _NONE,
    "m": _NONE,
    "c": _NONE,
    "x": _NONE,
    "f": _SEPARATE,
    "r": _SEPARATE,
    "F": _SEPARATE,
    "N": _SEPARATE,
    "R": _SEPARATE,
    "V": _SEPARATE,
    "B": _SEPARATE,
    "C": _SEPARATE,
    "b": _SEPARATE,
    "o": _SEPARATE,
    "A": _SEPARATE,
    "O": _SEPARATE,
    "L": _SEPARATE,
    "X": _SEPARATE,
    "h": _SEPARATE,
    "e": _SEPARATE,
    "p": _SEPARATE,
    "d": _ATTACHED,
    "q": _ATTACHED,
}

# Accepted for compatibility and recorded in ``Invocation.ignored``; nothing else
# happens. (-o and -A are ignored too, but are checked first.)
_IGNORED: "Final[frozenset[str]]" = frozenset("GUnmcxOLXhepd")

_B_MODES: "Final[dict[str, str]]" = {
    "m": MODE_DELIVER,
    "p": MODE_LIST_QUEUE,
    "i": MODE_ALIASES,
    "v": MODE_VERIFY,
    "s": MODE_SMTP,
}

# Modes in which argv words after the options are an error (Postfix: "... mode
# requires no recipient").
_NO_RECIPIENTS: "Final[frozenset[str]]" = frozenset(
    (MODE_LIST_QUEUE, MODE_ALIASES, MODE_RUN_QUEUE, MODE_SMTP)
)

# RFC 3461 order, which is also the order the relay writes NOTIFY= in.
_NOTIFY_ORDER: "Final[tuple[str, ...]]" = ("SUCCESS", "DELAY", "FAILURE")

_ENVID_MAX = 100  # RFC 3461 section 4.4

_SHOW_MAX = 60  # how much of a hostile word an error message repeats


# Invocation's attributes, in the order of the interface (and of its repr).
_FIELDS = (
    "prog",
    "mode",
    "extract_recipients",
    "dot_ends_input",
    "sender",
    "full_name",
    "body_type",
    "dsn_notify",
    "dsn_ret",
    "dsn_envid",
    "config_path",
    "verbose",
    "recipients",
    "ignored",
)


class Invocation:
    """What the command line asks for. Built by ``parse``; plain data.

    ``sender`` is ``None`` when no -f/-r was given and ``""`` for the null
    sender; ``ignored`` lists the accepted-but-ignored flags as written, one
    string each (``-oem``, ``-L tag``), for -v diagnostics.
    """

    __slots__ = _FIELDS

    def __init__(
        self,
        *,
        prog: str = "sendmail",
        mode: str = MODE_DELIVER,
        extract_recipients: bool = False,
        dot_ends_input: bool = True,
        sender: "str | None" = None,
        full_name: "str | None" = None,
        body_type: "str | None" = None,
        dsn_notify: "str | None" = None,
        dsn_ret: "str | None" = None,
        dsn_envid: "str | None" = None,
        config_path: "str | None" = None,
        verbose: int = 0,
        recipients: "list[str] | None" = None,
        ignored: "list[str] | None" = None,
    ) -> None:
        self.prog = prog
        self.mode = mode
        self.extract_recipients = extract_recipients
        self.dot_ends_input = dot_ends_input
        self.sender = sender
        self.full_name = full_name
        self.body_type = body_type
        self.dsn_notify = dsn_notify
        self.dsn_ret = dsn_ret
        self.dsn_envid = dsn_envid
        self.config_path = config_path
        self.verbose = verbose
        self.recipients: list[str] = [] if recipients is None else recipients
        self.ignored: list[str] = [] if ignored is None else ignored

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Invocation):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in _FIELDS)

    # Mutable, so not hashable (what defining __eq__ implies anyway).
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS)
        return f"Invocation({fields})"


def _show(word: str) -> str:
    """A hostile word made safe for a one-line message: escaped and shortened."""
    if len(word) > _SHOW_MAX:
        word = word[:_SHOW_MAX] + "..."
    if word.isprintable():
        return word
    # unicode_escape also covers lone surrogates (undecodable argv bytes).
    return word.encode("unicode_escape").decode("ascii")


def _has_control(word: str) -> bool:
    # isprintable() is one C call and true for almost every real word; only the
    # rare rest (non-ASCII spaces, undecodable bytes, controls) is scanned.
    if word.isprintable():
        return False
    return any(ch < " " or ch == "\x7f" for ch in word)


def _check_value(flag: str, value: str) -> None:
    if _has_control(value):
        raise DataError(f'{flag}: control character in value "{_show(value)}"')


def _dsn_notify(value: str) -> str:
    # Postfix also splits on spaces ("delay, failure"); isascii() keeps out
    # look-alikes that upper() would turn into ASCII ("ſuccess").
    words = value.upper().replace(",", " ").split(" ") if value.isascii() else []
    seen = {word for word in words if word}
    if seen == {"NEVER"}:
        return "NEVER"
    if seen and seen.issubset(_NOTIFY_ORDER):
        return ",".join(word for word in _NOTIFY_ORDER if word in seen)
    raise UsageError(f'-N: "{_show(value)}" is not never or a list of success, delay, failure')


def parse(argv: "list[str]") -> Invocation:
    """Turn a full argv (argv[0] is the program name) into an ``Invocation``.

    Raises ``UsageError`` for an unknown flag, a missing or bad value, or
    recipients in a mode that takes none; ``DataError`` for a control character
    in a flag value or a recipient.
    """
    inv = Invocation()
    mode = MODE_DELIVER
    mode_flag = "sendmail"  # what set the mode, for error messages
    if argv:
        # Only the basename counts: /usr/bin/mailq is mailq, as in Postfix.
        prog = argv[0].rpartition("/")[2]
        if prog == "mailq":
            inv.prog = mode_flag = prog
            mode = MODE_LIST_QUEUE
        elif prog == "newaliases":
            inv.prog = mode_flag = prog
            mode = MODE_ALIASES
    queue_time = False
    ignored = inv.ignored
    count = len(argv)
    index = 1

    while index < count:
        word = argv[index]
        if not word:
            index += 1
            continue
        # A lone "-" and the first word not starting with "-" end the options.
        if len(word) < 2 or word[0] != "-":
            break
        index += 1
        if word[1] == "-":
            if word == "--":
                break
            raise UsageError(f"unknown option {_show(word)}")
        pos = 1
        end = len(word)
        while pos < end:
            letter = word[pos]
            pos += 1
            kind = _TABLE.get(letter)
            if kind is None:
                raise UsageError(f"unknown option -{_show(letter)}")
            flag = "-" + letter
            value = ""
            written = flag
            if kind == _SEPARATE:
                if pos < end:
                    value = word[pos:]
                    written = flag + value
                elif index < count:
                    value = argv[index]
                    index += 1
                    written = flag + " " + value
                else:
                    raise UsageError(f"option {flag} requires a value")
                pos = end
                _check_value(flag, value)
            elif kind == _ATTACHED:
                value = word[pos:]
                written = flag + value
                pos = end
                _check_value(flag, value)

            # Most frequent first: -i, -t, -f, -o are in nearly every call.
            if letter == "i":
                inv.dot_ends_input = False
            elif letter == "t":
                inv.extract_recipients = True
            elif letter in "fr":
                inv.sender = "" if value == "<>" else value
            elif letter == "o":
                if value[:1] == "i":
                    inv.dot_ends_input = False
                else:
                    ignored.append(written)
            elif letter in _IGNORED:
                ignored.append(written)
            elif letter == "F":
                inv.full_name = value
            elif letter == "B":
                body = value.upper() if value.isascii() else ""
                if body not in {"7BIT", "8BITMIME"}:
                    raise UsageError(f'-B: "{_show(value)}" is not 7BIT or 8BITMIME')
                inv.body_type = body
            elif letter == "v":
                inv.verbose += 1
            elif letter == "b":
                new_mode = _B_MODES.get(value)
                if new_mode is None:
                    raise UsageError(
                        f"option {_show(written)} is not supported"
                        " (pysendmail knows -bm, -bp, -bi, -bv and -bs)"
                    )
                mode = new_mode
                mode_flag = "-b" + value
            elif letter == "q":
                head = value[:1]
                if not head:
                    mode = MODE_RUN_QUEUE
                    mode_flag = flag
                elif "0" <= head <= "9":
                    # Postfix: a queue-run interval is for a daemon; exit 0 at once.
                    queue_time = True
                    ignored.append(written)
                elif head in "RIS" and len(value) > 1:
                    mode = MODE_RUN_QUEUE
                    mode_flag = written
                    ignored.append(written)
                elif head in "RIS":
                    raise UsageError(f"option {flag}{head} requires a value")
                else:
                    raise UsageError(
                        f"option {_show(written)} is not supported"
                        " (pysendmail knows -q, -q<time>, -qR<site>, -qI<id>, -qS<site>)"
                    )
            elif letter == "I":
                mode = MODE_ALIASES
                mode_flag = flag
            elif letter == "N":
                inv.dsn_notify = _dsn_notify(value)
            elif letter == "R":
                ret = value.upper() if value.isascii() else ""
                if ret not in {"FULL", "HDRS"}:
                    raise UsageError(f'-R: "{_show(value)}" is not full or hdrs')
                inv.dsn_ret = ret
            elif letter == "V":
                if not value:
                    raise UsageError("option -V requires a value")
                if len(value) > _ENVID_MAX:
                    raise UsageError(f"-V: the envelope id is longer than {_ENVID_MAX} characters")
                inv.dsn_envid = value
            elif letter == "C":
                if not value:
                    raise UsageError("option -C requires a value")
                inv.config_path = value
            else:  # "A": the last letter in the table
                if value not in {"c", "m"}:
                    raise UsageError(f'-A: "{_show(value)}" is not c or m')
                ignored.append(written)

    recipients = inv.recipients
    for word in argv[index:]:
        if not word:
            continue
        if word == "-":
            raise UsageError('"-" is not a recipient: the message is always read from stdin')
        if _has_control(word):
            raise DataError(f'control character in recipient "{_show(word)}"')
        recipients.append(word)

    if queue_time:
        inv.mode = MODE_NOTHING
        return inv
    inv.mode = mode
    if mode == MODE_DELIVER:
        return inv
    if inv.extract_recipients:
        raise UsageError(f"-t can be used only in delivery mode, not with {mode_flag}")
    if mode in _NO_RECIPIENTS and recipients:
        raise UsageError(f'{_show(mode_flag)} takes no recipients, got "{_show(recipients[0])}"')
    if mode == MODE_VERIFY and not recipients:
        raise UsageError("-bv needs at least one recipient")
    return inv
