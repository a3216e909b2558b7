"""The sendmail command line: every flag, in every form real clients write it.

Pure tests of ``pysendmail.cli.argv.parse``: argv in, ``Invocation`` (or one
error line) out. The corpus test replays the argv of every captured client.
"""

import json
import pathlib
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pysendmail.cli.argv import (
    MODE_ALIASES,
    MODE_DELIVER,
    MODE_LIST_QUEUE,
    MODE_NOTHING,
    MODE_RUN_QUEUE,
    MODE_SMTP,
    MODE_VERIFY,
    Invocation,
    parse,
)
from pysendmail.errors import DataError, UsageError

SENDMAIL = "/usr/sbin/sendmail"
CORPUS = pathlib.Path("/work/shared/compat/corpus")
ROOT = pathlib.Path(__file__).resolve().parents[2]

MODES = {
    MODE_DELIVER,
    MODE_LIST_QUEUE,
    MODE_ALIASES,
    MODE_VERIFY,
    MODE_RUN_QUEUE,
    MODE_SMTP,
    MODE_NOTHING,
}
CONTROLS = [chr(c) for c in range(0x20)] + ["\x7f"]


def sm(*args: str) -> Invocation:
    return parse([SENDMAIL, *args])


def inv(**fields: object) -> Invocation:
    return Invocation(**fields)  # type: ignore[arg-type]


# --------------------------------------------------------------- implemented flags

# (argv after the program name, the Invocation it must give)
IMPLEMENTED = [
    # -t / -i / -oi, alone, in either order and clustered
    (["-t"], inv(extract_recipients=True)),
    (["-i"], inv(dot_ends_input=False)),
    (["-oi"], inv(dot_ends_input=False)),
    (["-o", "i"], inv(dot_ends_input=False)),
    (["-ti"], inv(extract_recipients=True, dot_ends_input=False)),
    (["-it"], inv(extract_recipients=True, dot_ends_input=False)),
    (["-toi"], inv(extract_recipients=True, dot_ends_input=False)),
    # -f and -r: attached, separate, clustered, the last wins
    (["-fa@x", "r@x"], inv(sender="a@x", recipients=["r@x"])),
    (["-f", "a@x", "r@x"], inv(sender="a@x", recipients=["r@x"])),
    (["-ra@x", "r@x"], inv(sender="a@x", recipients=["r@x"])),
    (["-r", "a@x", "r@x"], inv(sender="a@x", recipients=["r@x"])),
    (["-tfa@x"], inv(extract_recipients=True, sender="a@x")),
    (["-tf", "a@x"], inv(extract_recipients=True, sender="a@x")),
    (["-f", "a@x", "-fb@x", "r@x"], inv(sender="b@x", recipients=["r@x"])),
    (["-f", "a@x", "-r", "b@x", "r@x"], inv(sender="b@x", recipients=["r@x"])),
    (["-rb@x", "-f", "a@x", "r@x"], inv(sender="a@x", recipients=["r@x"])),
    # a separate value is the next word, whatever it looks like (getopt)
    (["-f", "-oi", "r@x"], inv(sender="-oi", recipients=["r@x"])),
    (["-f", "--", "r@x"], inv(sender="--", recipients=["r@x"])),
    # -F
    (["-FCron Daemon", "r"], inv(full_name="Cron Daemon", recipients=["r"])),
    (["-F", "Sender Name", "r"], inv(full_name="Sender Name", recipients=["r"])),
    (["-F", "", "r"], inv(full_name="", recipients=["r"])),
    (["-F", "Zoë Müller", "r"], inv(full_name="Zoë Müller", recipients=["r"])),
    # latin-1 bytes in argv arrive as surrogate escapes and are kept
    (["-F", "Zo\udceb", "r"], inv(full_name="Zo\udceb", recipients=["r"])),
    # -N: normalised to RFC 3461 order, any case, commas or spaces
    (["-Nnever", "r"], inv(dsn_notify="NEVER", recipients=["r"])),
    (["-N", "NEVER", "r"], inv(dsn_notify="NEVER", recipients=["r"])),
    (
        ["-N", "failure,delay,success", "r"],
        inv(dsn_notify="SUCCESS,DELAY,FAILURE", recipients=["r"]),
    ),
    (["-Ndelay, failure", "r"], inv(dsn_notify="DELAY,FAILURE", recipients=["r"])),
    (["-N", "Failure", "r"], inv(dsn_notify="FAILURE", recipients=["r"])),
    (["-N", "success,success", "r"], inv(dsn_notify="SUCCESS", recipients=["r"])),
    (["-N", "failure,success", "r"], inv(dsn_notify="SUCCESS,FAILURE", recipients=["r"])),
    # -R
    (["-Rhdrs", "r"], inv(dsn_ret="HDRS", recipients=["r"])),
    (["-R", "FULL", "r"], inv(dsn_ret="FULL", recipients=["r"])),
    (["-R", "Full", "r"], inv(dsn_ret="FULL", recipients=["r"])),
    # -V
    (["-Venv-42", "r"], inv(dsn_envid="env-42", recipients=["r"])),
    (["-V", "env 42", "r"], inv(dsn_envid="env 42", recipients=["r"])),
    (["-V", "x" * 100, "r"], inv(dsn_envid="x" * 100, recipients=["r"])),
    # -B: upper-cased
    (["-B8BITMIME", "r"], inv(body_type="8BITMIME", recipients=["r"])),
    (["-B", "7BIT", "r"], inv(body_type="7BIT", recipients=["r"])),
    (["-B", "8bitmime", "r"], inv(body_type="8BITMIME", recipients=["r"])),
    (["-B7bit", "r"], inv(body_type="7BIT", recipients=["r"])),
    # -C
    (["-C/etc/other.toml", "r"], inv(config_path="/etc/other.toml", recipients=["r"])),
    (["-C", "/etc/other.toml", "r"], inv(config_path="/etc/other.toml", recipients=["r"])),
    (["-tC", "x.toml"], inv(extract_recipients=True, config_path="x.toml")),
    # -v counts
    (["-v", "r"], inv(verbose=1, recipients=["r"])),
    (["-vv", "r"], inv(verbose=2, recipients=["r"])),
    (["-v", "-tvv", "r"], inv(verbose=3, extract_recipients=True, recipients=["r"])),
    # -bm is the default; it also brings back delivery after another mode
    (["-bm", "r"], inv(recipients=["r"])),
    (["-b", "m", "r"], inv(recipients=["r"])),
    (["-bp", "-bm", "r"], inv(recipients=["r"])),
    # everything at once, as a careful client might write it
    (
        [
            "-t",
            "-i",
            "-f",
            "<>",
            "-F",
            "Bounce",
            "-N",
            "never",
            "-R",
            "hdrs",
            "-V",
            "id1",
            "-B",
            "7bit",
            "-C",
            "c.toml",
            "-v",
            "--",
            "a@x",
            "b@x",
        ],
        inv(
            extract_recipients=True,
            dot_ends_input=False,
            sender="",
            full_name="Bounce",
            dsn_notify="NEVER",
            dsn_ret="HDRS",
            dsn_envid="id1",
            body_type="7BIT",
            config_path="c.toml",
            verbose=1,
            recipients=["a@x", "b@x"],
        ),
    ),
]


@pytest.mark.parametrize(("args", "expected"), IMPLEMENTED, ids=lambda v: repr(v)[:60])
def test_implemented_flags(args: list[str], expected: Invocation) -> None:
    assert sm(*args) == expected


@pytest.mark.parametrize("null", ["<>", ""])
@pytest.mark.parametrize("letter", ["f", "r"])
def test_null_sender_forms_are_stored_as_empty(letter: str, null: str) -> None:
    assert sm(f"-{letter}", null, "r@x").sender == ""
    if null:  # an empty value can only be a separate word
        assert sm(f"-{letter}{null}", "r@x").sender == ""
    # PHP passes -f twice; a real sender after the null one wins, and vice versa
    assert sm(f"-{letter}", null, "-fa@x", "r@x").sender == "a@x"
    assert sm("-fa@x", f"-{letter}", null, "r@x").sender == ""


def test_no_sender_flag_leaves_sender_unset() -> None:
    assert sm("r@x").sender is None


def test_angle_brackets_around_a_real_sender_are_kept_for_the_intake_to_judge() -> None:
    assert sm("-f", "<a@x>", "r@x").sender == "<a@x>"


# ----------------------------------------------------------------- ignored flags

# (argv, what ``ignored`` records, the other fields a cluster sets) — every
# one followed by a recipient.
IGNORED: list[tuple[list[str], list[str], dict[str, object]]] = [
    (["-oem"], ["-oem"], {}),
    (["-odi"], ["-odi"], {}),
    (["-odb"], ["-odb"], {}),
    (["-om"], ["-om"], {}),
    (["-oA/etc/aliases"], ["-oA/etc/aliases"], {}),
    (["-o", "em"], ["-o em"], {}),
    (["-o", "QueueDirectory=/tmp"], ["-o QueueDirectory=/tmp"], {}),
    (["-O", "DeliveryMode=b"], ["-O DeliveryMode=b"], {}),
    (["-ODeliveryMode=b"], ["-ODeliveryMode=b"], {}),
    (["-L", "tag"], ["-L tag"], {}),
    (["-Ltag"], ["-Ltag"], {}),
    (["-X", "/tmp/log"], ["-X /tmp/log"], {}),
    (["-X/tmp/log"], ["-X/tmp/log"], {}),
    (["-XV"], ["-XV"], {}),
    (["-h", "5"], ["-h 5"], {}),
    (["-h5"], ["-h5"], {}),
    (["-e", "x"], ["-e x"], {}),
    (["-ep"], ["-ep"], {}),
    (["-p", "smtp"], ["-p smtp"], {}),
    (["-psmtp:host"], ["-psmtp:host"], {}),
    (["-n"], ["-n"], {}),
    (["-m"], ["-m"], {}),
    (["-U"], ["-U"], {}),
    (["-G"], ["-G"], {}),
    (["-c"], ["-c"], {}),
    (["-x"], ["-x"], {}),
    (["-Ac"], ["-Ac"], {}),
    (["-Am"], ["-Am"], {}),
    (["-A", "c"], ["-A c"], {}),
    (["-d0.1"], ["-d0.1"], {}),
    (["-d"], ["-d"], {}),
    (["-d8.99"], ["-d8.99"], {}),
    (["-nmUGcx"], ["-n", "-m", "-U", "-G", "-c", "-x"], {}),
    (["-tnoem"], ["-n", "-oem"], {"extract_recipients": True}),
    (["-iL", "tag"], ["-L tag"], {"dot_ends_input": False}),
    (["-vd0.1"], ["-d0.1"], {"verbose": 1}),
    (["-oem", "-odb", "-h", "5", "-O", "a=b"], ["-oem", "-odb", "-h 5", "-O a=b"], {}),
]


@pytest.mark.parametrize(("args", "written", "others"), IGNORED, ids=lambda v: repr(v)[:60])
def test_ignored_flags_change_nothing_and_their_values_never_become_recipients(
    args: list[str], written: list[str], others: dict[str, object]
) -> None:
    # Apart from the record in ``ignored``, the invocation is a plain delivery.
    assert sm(*args, "user@x") == inv(recipients=["user@x"], ignored=written, **others)


@pytest.mark.parametrize(
    "args",
    # ssmtp mailed each of these values as a recipient (FLAGS.md, trap 8)
    [["-B", "7BIT"], ["-X", "file"], ["-L", "tag"], ["-h", "5"], ["-O", "Foo=bar"], ["-o", "db"]],
)
def test_values_that_ssmtp_mailed_stay_values(args: list[str]) -> None:
    assert sm(*args, "user@x").recipients == ["user@x"]
    assert args[1] not in sm(*args, "user@x").recipients


def test_debug_flag_does_nothing_and_leaves_the_next_word_a_recipient() -> None:
    # msmtp's -d takes no value: "-d root" means debug, mail root.
    assert sm("-d", "root") == inv(recipients=["root"], ignored=["-d"])
    assert sm("-d0.1", "root") == inv(recipients=["root"], ignored=["-d0.1"])


def test_bare_o_takes_the_next_word_even_when_it_looks_like_a_flag() -> None:
    assert sm("-o", "-t", "r@x") == inv(recipients=["r@x"], ignored=["-o -t"])


def test_oi_prefix_means_i_as_in_postfix() -> None:
    assert sm("-oiTrue", "r@x") == inv(dot_ends_input=False, recipients=["r@x"])


# ------------------------------------------------------------------------ modes

MODE_CASES = [
    ([SENDMAIL], MODE_DELIVER, "sendmail"),
    (["sendmail"], MODE_DELIVER, "sendmail"),
    (["/usr/lib/sendmail"], MODE_DELIVER, "sendmail"),
    (["/usr/bin/pysendmail-wrapper"], MODE_DELIVER, "sendmail"),
    (["/usr/bin/mailq"], MODE_LIST_QUEUE, "mailq"),
    (["mailq"], MODE_LIST_QUEUE, "mailq"),
    (["/usr/bin/newaliases"], MODE_ALIASES, "newaliases"),
    ([SENDMAIL, "-bp"], MODE_LIST_QUEUE, "sendmail"),
    ([SENDMAIL, "-b", "p"], MODE_LIST_QUEUE, "sendmail"),
    ([SENDMAIL, "-bi"], MODE_ALIASES, "sendmail"),
    ([SENDMAIL, "-I"], MODE_ALIASES, "sendmail"),
    ([SENDMAIL, "-bs"], MODE_SMTP, "sendmail"),
    ([SENDMAIL, "-q"], MODE_RUN_QUEUE, "sendmail"),
    ([SENDMAIL, "-v", "-q"], MODE_RUN_QUEUE, "sendmail"),
    ([SENDMAIL, "-vq"], MODE_RUN_QUEUE, "sendmail"),
    ([SENDMAIL, "-qRexample.com"], MODE_RUN_QUEUE, "sendmail"),
    ([SENDMAIL, "-qI4F2A1B"], MODE_RUN_QUEUE, "sendmail"),
    ([SENDMAIL, "-qSexample.com"], MODE_RUN_QUEUE, "sendmail"),
    ([SENDMAIL, "-q30m"], MODE_NOTHING, "sendmail"),
    ([SENDMAIL, "-q1h"], MODE_NOTHING, "sendmail"),
    ([SENDMAIL, "-bv", "root"], MODE_VERIFY, "sendmail"),
    # the program name sets the default; flags override it, the last one wins
    (["newaliases", "-bp"], MODE_LIST_QUEUE, "newaliases"),
    (["mailq", "-bm", "r@x"], MODE_DELIVER, "mailq"),
    ([SENDMAIL, "-bp", "-bs"], MODE_SMTP, "sendmail"),
    ([SENDMAIL, "-bs", "-q"], MODE_RUN_QUEUE, "sendmail"),
    # a queue interval wins over everything (Postfix exits 0 before any mode)
    ([SENDMAIL, "-q30m", "-bp"], MODE_NOTHING, "sendmail"),
    ([SENDMAIL, "-bs", "-q15m", "r@x"], MODE_NOTHING, "sendmail"),
    ([SENDMAIL, "-t", "-q5m"], MODE_NOTHING, "sendmail"),
]


@pytest.mark.parametrize(("argv", "mode", "prog"), MODE_CASES, ids=lambda v: repr(v)[:60])
def test_modes(argv: list[str], mode: str, prog: str) -> None:
    got = parse(argv)
    assert (got.mode, got.prog) == (mode, prog)


def test_empty_argv_is_a_plain_sendmail() -> None:
    assert parse([]) == inv()


def test_queue_filters_and_intervals_are_recorded_as_ignored() -> None:
    assert sm("-qRexample.com").ignored == ["-qRexample.com"]
    assert sm("-q30m").ignored == ["-q30m"]
    assert sm("-q").ignored == []


def test_q_never_takes_the_next_word() -> None:
    with pytest.raises(UsageError, match=r'^-q takes no recipients, got "root"$'):
        sm("-q", "root")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([SENDMAIL, "-bp", "r@x"], '-bp takes no recipients, got "r@x"'),
        (["mailq", "r@x"], 'mailq takes no recipients, got "r@x"'),
        ([SENDMAIL, "-bi", "r@x"], '-bi takes no recipients, got "r@x"'),
        ([SENDMAIL, "-I", "r@x"], '-I takes no recipients, got "r@x"'),
        (["newaliases", "r@x"], 'newaliases takes no recipients, got "r@x"'),
        ([SENDMAIL, "-bs", "r@x"], '-bs takes no recipients, got "r@x"'),
        ([SENDMAIL, "-q", "r@x"], '-q takes no recipients, got "r@x"'),
        ([SENDMAIL, "-qRsite", "r@x"], '-qRsite takes no recipients, got "r@x"'),
        ([SENDMAIL, "-bv"], "-bv needs at least one recipient"),
        ([SENDMAIL, "-bv", "--"], "-bv needs at least one recipient"),
        ([SENDMAIL, "-t", "-bp"], "-t can be used only in delivery mode, not with -bp"),
        (["mailq", "-t"], "-t can be used only in delivery mode, not with mailq"),
        ([SENDMAIL, "-t", "-bv", "r@x"], "-t can be used only in delivery mode, not with -bv"),
        ([SENDMAIL, "-bs", "-t"], "-t can be used only in delivery mode, not with -bs"),
    ],
)
def test_modes_that_take_no_recipients_or_need_them(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse(argv)
    assert str(caught.value) == message
    assert caught.value.exit_status == 64


def test_verify_and_nothing_keep_their_recipients() -> None:
    assert sm("-bv", "root", "a@x").recipients == ["root", "a@x"]
    assert sm("-q30m", "root").recipients == ["root"]


@pytest.mark.parametrize("letter", list("dtDlqhHPaAxXz7"))
def test_other_b_modes_are_refused_as_not_supported(letter: str) -> None:
    with pytest.raises(UsageError) as caught:
        sm(f"-b{letter}")
    assert str(caught.value) == (
        f"option -b{letter} is not supported (pysendmail knows -bm, -bp, -bi, -bv and -bs)"
    )


@pytest.mark.parametrize("value", ["pp", "mumble", "P", "", "M"])
def test_b_values_must_be_exactly_one_known_letter(value: str) -> None:
    with pytest.raises(UsageError, match="is not supported"):
        sm("-b", value)


@pytest.mark.parametrize("word", ["-qf", "-qp", "-q!Rsite", "-qGgroup", "-qr", "-qx5"])
def test_other_q_forms_are_refused(word: str) -> None:
    with pytest.raises(UsageError) as caught:
        sm(word)
    assert str(caught.value) == (
        f"option {word} is not supported"
        " (pysendmail knows -q, -q<time>, -qR<site>, -qI<id>, -qS<site>)"
    )


@pytest.mark.parametrize("word", ["-qR", "-qI", "-qS"])
def test_queue_filters_need_a_value(word: str) -> None:
    with pytest.raises(UsageError, match=f"^option {word} requires a value$"):
        sm(word)


# ------------------------------------------------------------------ bad usage


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-Z"], "unknown option -Z"),
        (["-M", "id"], "unknown option -M"),
        (["-E"], "unknown option -E"),
        (["-D"], "unknown option -D"),
        (["-S"], "unknown option -S"),  # msmtp's --serverinfo: must not send
        (["-P"], "unknown option -P"),
        (["-a", "acct"], "unknown option -a"),
        (["-s"], "unknown option -s"),
        (["-T"], "unknown option -T"),
        (["-tZ"], "unknown option -Z"),
        (["-t", "-iZt"], "unknown option -Z"),
        (["-é"], "unknown option -é"),
        (["-\x01"], r"unknown option -\x01"),
        (["-\udcff"], r"unknown option -\udcff"),
        (["--read-envelope-from"], "unknown option --read-envelope-from"),
        (["--host=smtp.example.com"], "unknown option --host=smtp.example.com"),
        (["---"], "unknown option ---"),
        (["--\n"], r"unknown option --\n"),
        (["-Nsometimes"], '-N: "sometimes" is not never or a list of success, delay, failure'),
        (
            ["-N", "never,success"],
            '-N: "never,success" is not never or a list of success, delay, failure',
        ),
        (["-N", ""], '-N: "" is not never or a list of success, delay, failure'),
        (["-N", ","], '-N: "," is not never or a list of success, delay, failure'),
        # look-alikes that str.upper() would turn into ASCII
        (["-N", "ſuccess"], '-N: "ſuccess" is not never or a list of success, delay, failure'),
        (["-Rall"], '-R: "all" is not full or hdrs'),
        (["-R", ""], '-R: "" is not full or hdrs'),
        (["-B", "BINARYMIME"], '-B: "BINARYMIME" is not 7BIT or 8BITMIME'),
        (["-B8BİTMIME"], '-B: "8BİTMIME" is not 7BIT or 8BITMIME'),
        (["-B", "8bit"], '-B: "8bit" is not 7BIT or 8BITMIME'),
        (["-Ap"], '-A: "p" is not c or m'),
        (["-A", "cm"], '-A: "cm" is not c or m'),
        (["-V", ""], "option -V requires a value"),
        (["-V", "x" * 101], "-V: the envelope id is longer than 100 characters"),
        (["-C", ""], "option -C requires a value"),
        (["-"], '"-" is not a recipient: the message is always read from stdin'),
        (["-t", "-"], '"-" is not a recipient: the message is always read from stdin'),
        (["--", "a@x", "-"], '"-" is not a recipient: the message is always read from stdin'),
    ],
    ids=lambda v: repr(v)[:60],
)
def test_usage_errors_are_one_line_naming_the_flag(args: list[str], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        sm(*args, "r@x")
    assert str(caught.value) == message
    assert caught.value.exit_status == 64


def test_a_long_bad_value_is_shortened_in_the_message() -> None:
    with pytest.raises(UsageError) as caught:
        sm("-B", "X" * 5000)
    assert str(caught.value) == '-B: "' + "X" * 60 + '..." is not 7BIT or 8BITMIME'


VALUE_LETTERS = list("frFNRVBCboAOLXhep")


@pytest.mark.parametrize("letter", VALUE_LETTERS)
def test_missing_value_is_a_usage_error(letter: str) -> None:
    for args in (
        [f"-{letter}"],
        ["-t", f"-{letter}"],
        [f"-t{letter}"],
        ["-i", f"-vt{letter}"],
    ):
        with pytest.raises(UsageError) as caught:
            sm(*args)
        assert str(caught.value) == f"option -{letter} requires a value"


# ------------------------------------------------------------ control characters


@pytest.mark.parametrize("control", CONTROLS, ids=lambda c: f"0x{ord(c):02x}")
def test_control_characters_in_any_flag_value_are_data_errors(control: str) -> None:
    for letter in [*VALUE_LETTERS, "d", "q"]:
        value = f"a{control}b"
        forms = [[f"-{letter}{value}"], [f"-t{letter}{value}"]]
        if letter not in "dq":
            forms.append([f"-{letter}", value])
        for args in forms:
            with pytest.raises(DataError) as caught:
                sm(*args, "r@x")
            assert str(caught.value) == (
                f'-{letter}: control character in value "{value.encode("unicode_escape").decode()}"'
            )
            assert caught.value.exit_status == 65
            assert "\n" not in str(caught.value)
            assert "\r" not in str(caught.value)


@pytest.mark.parametrize("control", CONTROLS, ids=lambda c: f"0x{ord(c):02x}")
def test_control_characters_in_a_recipient_are_data_errors(control: str) -> None:
    word = f"user{control}@x"
    shown = word.encode("unicode_escape").decode()
    for args in (["-i", word], ["--", "-x", word], ["a@x", word], ["-q30m", word]):
        with pytest.raises(DataError) as caught:
            sm(*args)
        assert str(caught.value) == f'control character in recipient "{shown}"'


def test_header_injection_through_the_full_name_is_refused() -> None:
    with pytest.raises(DataError, match=r"^-F: control character"):
        sm("-F", "Eve\r\nBcc: victim@example.com", "r@x")


def test_non_ascii_and_undecodable_bytes_are_not_control_characters() -> None:
    # U+0085 (NEL) and U+2028 are not C0: 8-bit bytes are kept as they are.
    got = sm("-F", "a\x85b\u2028c\udc9b", "ü@x")
    assert (got.full_name, got.recipients) == ("a\x85b\u2028c\udc9b", ["ü@x"])


# -------------------------------------------------------- option order and "--"


@pytest.mark.parametrize(
    ("args", "recipients"),
    [
        (["--", "-dash@x"], ["-dash@x"]),
        (["-i", "--", "-oi", "-t"], ["-oi", "-t"]),
        (["--", "--"], ["--"]),
        (["--", "a@x", "--", "b@x"], ["a@x", "--", "b@x"]),
        # the first non-option ends the options (getopt "+", as Postfix); later
        # words are recipients even when they look like flags, unlike msmtp
        (["a@x", "-oi"], ["a@x", "-oi"]),
        (["-i", "a@x", "-t", "-f", "evil@x"], ["a@x", "-t", "-f", "evil@x"]),
        (["a@x", "--", "b@x"], ["a@x", "--", "b@x"]),
        # empty words carry no address and are skipped
        (["", "a@x"], ["a@x"]),
        (["-t", "--", ""], []),
        (["a@x", "", "b@x"], ["a@x", "b@x"]),
        # recipient words are kept exactly as written
        (["Name <a@x>", "a@x, b@x", "root"], ["Name <a@x>", "a@x, b@x", "root"]),
    ],
)
def test_options_end_at_double_dash_or_the_first_recipient(
    args: list[str], recipients: list[str]
) -> None:
    got = sm(*args)
    assert got.recipients == recipients


def test_flags_after_a_recipient_have_no_effect() -> None:
    got = sm("-i", "a@x", "-t", "-f", "evil@x")
    assert (got.extract_recipients, got.sender) == (False, None)


def test_an_empty_word_among_the_options_is_skipped_not_an_end_of_options() -> None:
    # getopt would stop at "", making "-t" a recipient (-t@domain): a misdelivery.
    assert sm("", "-t", "", "-i", "a@x") == inv(
        extract_recipients=True, dot_ends_input=False, recipients=["a@x"]
    )
    # ...but an empty separate value is still a value
    assert sm("-f", "", "-t") == inv(sender="", extract_recipients=True)


# ---------------------------------------------------------------------- corpus

CORPUS_EXPECTED = {
    "001-php-default": inv(extract_recipients=True, dot_ends_input=False),
    "002-php-d-sendmail_path-t-i": inv(extract_recipients=True, dot_ends_input=False),
    "003-php-d-sendmail_path-t": inv(extract_recipients=True),
    "004-php-d-sendmail_path-t-i-f": inv(
        extract_recipients=True, dot_ends_input=False, sender="webmaster@example.com"
    ),
    "005-php-additional_params-f": inv(
        extract_recipients=True, dot_ends_input=False, sender="sender@example.com"
    ),
    "006-php-cc-bcc-array-headers-multi-to": inv(
        extract_recipients=True,
        dot_ends_input=False,
        sender="s@example.com",
        full_name="Sender Name",
    ),
    "007-php-mixed_lf_and_crlf-On": inv(extract_recipients=True, dot_ends_input=False),
    "008-php-force_extra_parameters": inv(
        extract_recipients=True, dot_ends_input=False, sender="forced@example.com"
    ),
    "009-bsd-mailx-plain-root": inv(extract_recipients=True, dot_ends_input=False),
    "010-bsd-mailx-header-a": inv(extract_recipients=True, dot_ends_input=False),
    "011-bsd-mailx-r-from": inv(
        extract_recipients=True, dot_ends_input=False, sender="sender@example.com"
    ),
    "012-bsd-mailx-multi-cc-bcc-8bit": inv(extract_recipients=True, dot_ends_input=False),
    "013-bsd-mailx-extra-sendmail-args": inv(extract_recipients=True, dot_ends_input=False),
    "014-s-nail-plain-root": inv(dot_ends_input=False, recipients=["root"]),
    "015-s-nail-C-header": inv(dot_ends_input=False, recipients=["user@example.com"]),
    "016-s-nail-r-from": inv(
        dot_ends_input=False, sender="sender@example.com", recipients=["user@example.com"]
    ),
    "017-s-nail-multi-cc-bcc-8bit": inv(
        dot_ends_input=False,
        recipients=["a@example.com", "b@example.com", "cc@example.com", "bcc@example.com"],
    ),
    "018-s-nail-extra-mta-args-expandargv": inv(
        dot_ends_input=False,
        sender="x@example.com",
        recipients=["user@example.com"],
        ignored=["-oem"],
    ),
    "019-s-nail-mta-arguments": inv(
        dot_ends_input=False, recipients=["user@example.com"], ignored=["-oem"]
    ),
    # s-nail without -i: a lone "." would end the input (s-nail QP-encodes it)
    "020-s-nail-mta-argv0": inv(recipients=["user@example.com"]),
    "021-cron": inv(
        dot_ends_input=False,
        full_name="CronDaemon",
        body_type="8BITMIME",
        recipients=["root"],
        ignored=["-oem"],
    ),
    "022-cron": inv(
        dot_ends_input=False,
        full_name="CronDaemon",
        body_type="8BITMIME",
        recipients=["nobody"],
        ignored=["-oem"],
    ),
    "023-cron": inv(
        dot_ends_input=False,
        full_name="CronDaemon",
        body_type="8BITMIME",
        recipients=["mailto-test@example.com"],
        ignored=["-oem"],
    ),
    "024-mutt-batch-plain": inv(
        dot_ends_input=False, recipients=["user@example.com"], ignored=["-oem"]
    ),
    "025-mutt-batch-root-local": inv(
        dot_ends_input=False, recipients=["root@vm"], ignored=["-oem"]
    ),
    "026-mutt-batch-cc-bcc-attach": inv(
        dot_ends_input=False,
        recipients=["user@example.com", "cc@example.com", "bcc@example.com"],
        ignored=["-oem"],
    ),
    "027-mutt-batch-envelope-from": inv(
        dot_ends_input=False,
        sender="sender@example.com",
        recipients=["user@example.com"],
        ignored=["-oem"],
    ),
    "028-git-send-email-smtpserver-config": inv(
        dot_ends_input=False,
        recipients=["user@example.com", "cc@example.com", "dev@example.com", "bcc@example.com"],
    ),
    "029-git-send-email-envelope-sender": inv(
        dot_ends_input=False,
        sender="env@example.com",
        recipients=["user@example.com", "dev@example.com"],
    ),
    "030-git-send-email-smtp-server-option": inv(
        dot_ends_input=False, recipients=["root"], ignored=["-oem"]
    ),
}


def _corpus_cases() -> list[str]:
    return sorted(p.parent.name for p in CORPUS.glob("*/case.json"))


def test_every_corpus_case_has_an_expectation() -> None:
    assert _corpus_cases() == sorted(CORPUS_EXPECTED)


@pytest.mark.parametrize("case", sorted(CORPUS_EXPECTED))
def test_corpus_argv_means_what_its_client_meant(case: str) -> None:
    args = json.loads((CORPUS / case / "case.json").read_text())["argv"]
    assert parse([SENDMAIL, *args]) == CORPUS_EXPECTED[case]


# ------------------------------------------------------------------- Invocation


def test_invocation_equality_repr_and_defaults() -> None:
    got = sm("-t", "-i", "a@x")
    assert got == inv(extract_recipients=True, dot_ends_input=False, recipients=["a@x"])
    assert got != inv(extract_recipients=True, recipients=["a@x"])
    assert got != "Invocation"
    assert repr(got).startswith("Invocation(prog='sendmail', mode='deliver', ")
    assert "recipients=['a@x']" in repr(got)
    assert inv().recipients is not inv().recipients  # no shared default list
    with pytest.raises(TypeError):
        hash(got)


# ------------------------------------------------------------------- properties

SAMPLE_WORDS = [
    "-t", "-i", "-oi", "-f", "-r", "-F", "-N", "-R", "-V", "-B", "-C", "-v", "-b", "-bp",
    "-bm", "-bi", "-bv", "-bs", "-bd", "-q", "-q30m", "-qR", "-qRx", "-o", "-O", "-L",
    "-X", "-h", "-A", "-Ac", "-d", "-d0.1", "-e", "-p", "-n", "-m", "-U", "-G", "-c",
    "-x", "-I", "--", "-", "", "never", "hdrs", "7BIT", "a@x", "-ti", "-tf", "-Z",
]  # fmt: skip

any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=12)
words = st.one_of(st.sampled_from(SAMPLE_WORDS), any_text, any_text.map(lambda s: "-" + s))
argv0 = st.sampled_from(["sendmail", SENDMAIL, "mailq", "/usr/bin/newaliases", "", "x/"])


def _clean(value: str | None) -> bool:
    return value is None or not any(ch < " " or ch == "\x7f" for ch in value)


@settings(max_examples=1500, deadline=None)
@given(argv0, st.lists(words, max_size=8))
def test_any_argv_gives_an_invocation_or_one_usage_or_data_error(
    prog: str, args: list[str]
) -> None:
    try:
        got = parse([prog, *args])
    except (UsageError, DataError) as exc:
        text = str(exc)
        assert text
        assert _clean(text)  # one line, nothing that could inject into a terminal
        return
    assert isinstance(got, Invocation)
    assert got.mode in MODES
    assert got.prog in {"sendmail", "mailq", "newaliases"}
    assert got.body_type in {None, "7BIT", "8BITMIME"}
    assert got.dsn_ret in {None, "FULL", "HDRS"}
    assert (
        got.dsn_notify is None
        or got.dsn_notify == "NEVER"
        or (set(got.dsn_notify.split(",")) <= {"SUCCESS", "DELAY", "FAILURE"})
    )
    for value in (got.sender, got.full_name, got.dsn_envid, got.config_path, *got.recipients):
        assert _clean(value)
    assert all(r and r != "-" for r in got.recipients)
    # a recipient always comes from the argv, in order
    rest = [a for a in args if a]
    it = iter(rest)
    assert all(any(r == a for a in it) for r in got.recipients)


ignored_flag = st.one_of(
    st.tuples(st.sampled_from(list("OLXhep")), st.booleans()),
    st.tuples(st.just("o"), st.booleans()),
)
marker = st.text(alphabet="VALUE-=./0123456789", min_size=1, max_size=8)
recipient = st.from_regex(r"\A[a-z][a-z0-9.]{0,8}@[a-z]{1,8}\.example\Z")


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.tuples(ignored_flag, marker), max_size=6),
    st.lists(recipient, min_size=1, max_size=4),
    st.booleans(),
)
def test_no_mix_of_ignored_flags_leaks_a_value_into_the_recipients(
    flags: list[tuple[tuple[str, bool], str]], rcpts: list[str], dashdash: bool
) -> None:
    args: list[str] = []
    for (letter, attached), value in flags:
        if letter == "o" and value.startswith("i"):
            value = "X" + value
        if attached:
            args.append(f"-{letter}{value}")
        else:
            args += [f"-{letter}", value]
    if dashdash:
        args.append("--")
    got = sm(*args, *rcpts)
    assert got.recipients == rcpts
    assert len(got.ignored) == len(flags)


# ------------------------------------------------------------ the hot-path budget

HEAVY = {
    "typing",
    "re",
    "dataclasses",
    "enum",
    "getopt",
    "argparse",
    "collections",
    "functools",
    "__future__",
    "email",
    "ssl",
    "asyncio",
    "pysendmail.smtp",
}


def test_importing_the_parser_pulls_in_nothing_heavy() -> None:
    # -S as well as -I: the editable install's .pth finder (setuptools) already
    # loads re, enum and functools at start-up, which a normal install does not;
    # without site, the module list is exactly what our import costs.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import pysendmail.cli.argv; "
        "print('\\n'.join(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(ROOT)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    loaded = set(out.split())
    assert "pysendmail.cli.argv" in loaded
    assert not loaded & HEAVY
    assert not {name for name in loaded if name.startswith("pysendmail.")} - {
        "pysendmail.cli",
        "pysendmail.cli.argv",
        "pysendmail.errors",
    }


def test_parsing_a_typical_argv_takes_microseconds() -> None:
    # parse() runs on every mail; a regression to milliseconds would show in
    # the start-up budget (about 15 ms for the whole command).
    argv = [SENDMAIL, "-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"]
    start = time.perf_counter()
    for _ in range(2000):
        parse(argv)
    assert (time.perf_counter() - start) / 2000 < 0.0002
