"""The spool-file prelude: round trips, and hostile queue files refused with DataError."""

import contextlib
import io

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pysendmail.errors import DataError, IOFailure
from pysendmail.message.envelope import MAX_PRELUDE, Envelope, Recipient

from .test_addresses import valid_addresses


def sample() -> Envelope:
    return Envelope(
        queue_id="0SB2K3M4N5P6Q7R8",
        sender="www-data@example.com",
        recipients=[
            Recipient("admin@example.com", "root", "SUCCESS,FAILURE"),
            Recipient("dörte@bücher.example", "dörte@bücher.example", None),
        ],
        dsn_ret="HDRS",
        dsn_envid="QQ 314+159=",
        body_type="8BITMIME",
        smtputf8=True,
        submitter_uid=33,
        submitter_login="www-data",
        arrival=1764446569.25,
        size=1234,
        eightbit=True,
    )


def test_round_trip_and_the_file_is_left_at_the_message() -> None:
    env = sample()
    f = io.BytesIO(env.to_bytes() + b"Subject: hi\r\n\r\nbody\r\n")
    again = Envelope.from_file(f)
    assert f.read() == b"Subject: hi\r\n\r\nbody\r\n"
    env.message_offset = again.message_offset
    assert again == env
    assert again.message_offset == len(env.to_bytes())


def test_the_prelude_is_readable_text_with_every_value_encoded() -> None:
    text = sample().to_bytes().decode("ascii")
    lines = text.split("\n")
    assert lines[0] == f"pysendmail-envelope 1 {len(text):010d}"
    assert "rcpt admin@example.com root SUCCESS,FAILURE" in lines
    assert "rcpt d+C3+B6rte@b+C3+BCcher.example d+C3+B6rte@b+C3+BCcher.example -" in lines
    assert "envid QQ+20314+2B159+3D" in lines
    assert lines[-2:] == ["end", ""]


def test_length_does_not_depend_on_size_eightbit_or_body_type() -> None:
    env = sample()
    before = env.to_bytes()
    env.size, env.eightbit, env.body_type = 10**19, False, None
    assert len(env.to_bytes()) == len(before)


def test_an_address_cannot_break_the_format() -> None:
    env = sample()
    env.recipients = [Recipient('"a b\\\\c+d=e"@example.com', "x y+z=w", None)]
    data = env.to_bytes()
    assert data.count(b"\nrcpt ") == 1
    again = Envelope.from_file(io.BytesIO(data))
    assert again.recipients == env.recipients


def test_a_prelude_that_cannot_be_read_back_is_never_written() -> None:
    env = sample()
    env.recipients = [Recipient("a@b.example\r\nRCPT TO:<x@y>", "a", None)]
    with pytest.raises(DataError, match="control character"):
        env.to_bytes()
    env = sample()
    env.queue_id = "../../etc/passwd"
    with pytest.raises(DataError, match="queue id"):
        env.to_bytes()


def test_the_null_sender_round_trips() -> None:
    env = sample()
    env.sender = ""
    assert Envelope.from_file(io.BytesIO(env.to_bytes())).sender == ""


_ids = st.text(
    st.sampled_from(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcxyz0123456789_-")), min_size=1, max_size=64
)
_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=30)
_notify = st.sampled_from([None, "NEVER", "SUCCESS", "FAILURE,DELAY", "SUCCESS,FAILURE,DELAY"])
_recipients = st.lists(st.builds(Recipient, valid_addresses, _text, _notify), max_size=5)
envelopes = st.builds(
    Envelope,
    queue_id=_ids,
    sender=st.just("") | valid_addresses,
    recipients=_recipients,
    dsn_ret=st.sampled_from([None, "FULL", "HDRS"]),
    dsn_envid=st.none() | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=100),
    body_type=st.sampled_from([None, "7BIT", "8BITMIME"]),
    smtputf8=st.booleans(),
    submitter_uid=st.integers(0, 2**32 - 1),
    submitter_login=_text,
    arrival=st.floats(min_value=0, max_value=1e12),
    size=st.integers(0, 10**20 - 1),
    eightbit=st.booleans(),
)


@given(envelopes, st.binary(max_size=50))
def test_any_valid_envelope_round_trips(env: Envelope, message: bytes) -> None:
    f = io.BytesIO(env.to_bytes() + message)
    again = Envelope.from_file(f)
    env.message_offset = again.message_offset
    assert again == env
    assert f.read() == message


def _good() -> bytes:
    return sample().to_bytes()


def _with_length(body: bytes) -> bytes:
    """A prelude whose length field is right for ``body`` (the lines after the first)."""
    total = len(b"pysendmail-envelope 1 0000000000\n") + len(body)
    return b"pysendmail-envelope 1 %010d\n" % total + body


def _replace(old: bytes, new: bytes) -> bytes:
    body = _good().split(b"\n", 1)[1]
    assert old in body
    return _with_length(body.replace(old, new, 1))


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (b"", "truncated"),
        (b"Subject: hi\r\n\r\nbody\r\n" * 3, "does not start with a pysendmail envelope"),
        (b"pysendmail-envelope 2 0000000100\n" + b"x" * 100, "version '2'"),
        (b"pysendmail-envelope 1 00000001x0\n" + b"x" * 100, "envelope length"),
        (b"pysendmail-envelope 1 9999999999\n", "larger than 65536"),
        (b"pysendmail-envelope 1 0000000010\n", "too short"),
        (_good()[:-1], "truncated inside the envelope"),
        (_good()[:-5] + b"\nEnd\n", "no end line"),
        (_replace(b"\nend\n", b"\nend\nX"), "does not end with a line end"),
        (_replace(b"uid 33\n", b""), "lacks the key uid"),
        (_replace(b"uid 33\n", b"uid 33\nuid 34\n"), "repeats the key uid"),
        (_replace(b"uid 33\n", b"uid 33\nfoo bar\n"), "unknown key 'foo'"),
        (_replace(b"uid 33\n", b"uid\n"), "has no value"),
        (_replace(b"uid 33\n", b"uid -1\n"), "uid is not a number"),
        (_replace(b"uid 33\n", b"uid 4294967296\n"), "uid 4294967296 is out of range"),
        (_replace(b"size 0", b"size x"), "size is not a number"),
        (_replace(b"eightbit 1", b"eightbit 2"), "eightbit is not 0 or 1"),
        (_replace(b"body 8", b"body 9"), "unknown body type"),
        (_replace(b"ret HDRS", b"ret NONE"), "DSN return 'NONE'"),
        (_replace(b"arrival 1764446569.25", b"arrival nan"), "arrival is not a time"),
        (_replace(b"arrival 1764446569.25", b"arrival 1e999"), "arrival time inf"),
        (_replace(b"arrival 1764446569.25", b"arrival -5.0"), "arrival time -5.0"),
        (_replace(b"arrival 1764446569.25", b"arrival 1..2"), "arrival is not a time"),
        (_replace(b"sender www-data@", b"sender www-data+0D+0A@"), "control character"),
        (_replace(b"sender www-data@", b"sender www data@"), "malformed rcpt line|no value|not"),
        (_replace(b"sender www-data@", b"sender www-data+zz@"), "malformed +XX escape"),
        (_replace(b"sender www-data@", b"sender www-data+E9@"), "not valid UTF-8"),
        (_replace(b"sender www-data@", b"sender www-data\xff@"), "xtext does not allow"),
        (_replace(b"sender www-data@example.com", b"sender root"), "has no domain"),
        (_replace(b"rcpt admin@example.com root", b"rcpt admin@example.com"), "malformed rcpt"),
        (_replace(b"SUCCESS,FAILURE", b"SOMETIMES"), "DSN notify"),
        (_replace(b"SUCCESS,FAILURE", b"FAILURE,SUCCESS,"), "DSN notify"),
        (_replace(b"id 0SB2K3M4N5P6Q7R8", b"id ../etc"), "queue id"),
        (_replace(b"envid QQ", b"envid +C3+A9"), "DSN envelope id"),
        (_replace(b"login www-data", b"login +1B"), "control character"),
    ],
)
def test_hostile_preludes_are_refused(data: bytes, complaint: str) -> None:
    with pytest.raises(DataError, match=complaint.replace("+", r"\+").replace("(", r"\(")):
        Envelope.from_file(io.BytesIO(data))


def test_a_prelude_over_the_limit_is_refused_without_reading_it() -> None:
    data = _good()

    class Counting(io.BytesIO):
        consumed = 0

        def read(self, n: int | None = -1) -> bytes:
            chunk = super().read(n)
            self.consumed += len(chunk)
            return chunk

    f = Counting(data)
    with pytest.raises(DataError, match="larger than 100 octets"):
        Envelope.from_file(f, max_prelude=100)
    assert f.consumed == len(b"pysendmail-envelope 1 0000000000\n")
    assert len(data) < MAX_PRELUDE


def test_every_truncation_is_refused() -> None:
    data = _good()
    for n in range(len(data)):
        with pytest.raises(DataError):
            Envelope.from_file(io.BytesIO(data[:n]))


@given(st.binary(max_size=400))
@example(b"pysendmail-envelope 1 0000000038\nend\n")
def test_garbage_raises_nothing_but_data_error(data: bytes) -> None:
    with contextlib.suppress(DataError):
        Envelope.from_file(io.BytesIO(data)).check()


@given(st.data())
def test_flipping_any_byte_gives_a_valid_envelope_or_data_error(data: st.DataObject) -> None:
    good = bytearray(_good())
    i = data.draw(st.integers(0, len(good) - 1))
    good[i] = data.draw(st.integers(0, 255))
    try:
        env = Envelope.from_file(io.BytesIO(bytes(good)))
    except DataError:
        return
    env.check()  # whatever is accepted is something a relay may be given


def test_a_read_error_is_an_io_failure() -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b: object) -> int:
            raise OSError(5, "Input/output error")

    with pytest.raises(IOFailure, match="Input/output error"):
        Envelope.from_file(Broken())  # type: ignore[arg-type]


def test_check_refuses_what_no_relay_should_see() -> None:
    for change, complaint in [
        ({"dsn_ret": "NONE"}, "DSN return"),
        ({"body_type": "BINARYMIME"}, "body type"),
        ({"submitter_uid": -1}, "uid -1 is out of range"),
        ({"size": 10**20}, "size"),
        ({"sender": "root"}, "has no domain"),
        ({"dsn_envid": "x" * 101}, "at most 100"),
    ]:
        env = sample()
        for name, value in change.items():
            setattr(env, name, value)
        with pytest.raises(DataError, match=complaint):
            env.to_bytes()
    env = sample()
    env.recipients[0].notify = "failure,success"
    with pytest.raises(DataError, match="canonical form"):
        env.to_bytes()


def test_values_compare_and_show_themselves() -> None:
    assert sample() == sample()
    assert sample() != "an envelope"
    assert Recipient("a@b.example") == Recipient("a@b.example", "a@b.example", None)
    assert Recipient("a@b.example") != "a@b.example"
    assert "Recipient('a@b.example'" in repr(Recipient("a@b.example"))
    assert "queue_id='0SB2K3M4N5P6Q7R8'" in repr(sample())


def test_an_unseekable_source_reports_the_prelude_length_as_offset() -> None:
    data = _good()

    class Pipe:
        def __init__(self) -> None:
            self.f = io.BytesIO(data + b"msg")

        def read(self, n: int) -> bytes:
            return self.f.read(n)

        def tell(self) -> int:
            raise OSError(29, "Illegal seek")

    env = Envelope.from_file(Pipe())  # type: ignore[arg-type]
    assert env.message_offset == len(data)
