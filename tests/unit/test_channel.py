"""Bounded decoding of an environment's output (snapfaas.worker.channel)."""

from __future__ import annotations

import pytest

from snapfaas.runtime.protocol import MAGIC, encode
from snapfaas.worker.channel import MAX_LINE_BYTES, Frame, FrameDecoder, FrameRejected, LineSplitter, TailBuffer


def feed_in_pieces(decoder: FrameDecoder, data: bytes, size: int) -> list[bytes | Frame]:
    out: list[bytes | Frame] = []
    for at in range(0, len(data), size):
        out.extend(decoder.feed(data[at : at + size]))
    return out


def frames(items: list[bytes | Frame]) -> list[tuple[str, bytes]]:
    return [(i.kind, i.payload) for i in items if isinstance(i, Frame)]


def stray(items: list[bytes | Frame]) -> bytes:
    return b"".join(i for i in items if isinstance(i, bytes))


@pytest.mark.parametrize("piece", [1, 3, 7, 64, 1 << 20])
def test_decoder_splits_frames_and_stray_output_whatever_the_read_sizes(piece: int) -> None:
    data = (b"hello " + encode("ready") + b"printed\n" + encode("response", b"x\n" + MAGIC + b" y", id="r")
            + b"tail" + encode("error", b"{}"))
    items = feed_in_pieces(FrameDecoder(1000), data, piece)
    assert frames(items) == [("ready", b""), ("response", b"x\n" + MAGIC + b" y"), ("error", b"{}")]
    assert stray(items) == b"hello printed\ntail"


def test_a_partial_magic_at_the_end_of_a_read_is_kept_not_logged() -> None:
    decoder = FrameDecoder(10)
    data = b"abc" + encode("ready")
    assert decoder.feed(data[:6]) == [b"abc"]  # "\x1esn" held back
    assert frames(decoder.feed(data[6:])) == [("ready", b"")]


def test_a_frame_over_the_limit_is_rejected_from_its_header_alone() -> None:
    decoder = FrameDecoder(6291556)
    forged = MAGIC + b' {"t":"response","n":1099511627776}\n'
    with pytest.raises(FrameRejected) as info:
        decoder.feed(forged + b"x" * 100)
    assert info.value.oversized and info.value.size == 2**40 and info.value.limit == 6291556
    assert len(decoder._buffer) == 0  # nothing of the payload is kept


def test_a_frame_exactly_at_the_limit_is_read() -> None:
    assert frames(FrameDecoder(5).feed(encode("response", b"12345"))) == [("response", b"12345")]
    with pytest.raises(FrameRejected):
        FrameDecoder(5).feed(encode("response", b"123456"))


@pytest.mark.parametrize("header", [b'{"t":"response","n":-1}', b'{"t":"response","n":"7"}', b'{"t":"response","n":true}',
                                    b'{"t":"response","n":1.5}', b'{"t":"response"}', b'{"n":1}', b'[1]', b'not json',
                                    b'{"t":7,"n":0}'])
def test_malformed_headers_are_rejected_not_oversized(header: bytes) -> None:
    with pytest.raises(FrameRejected) as info:
        FrameDecoder(100).feed(MAGIC + b" " + header + b"\n")
    assert not info.value.oversized


def test_an_endless_header_line_is_rejected_at_the_header_cap() -> None:
    decoder = FrameDecoder(100, max_header=1000)
    decoder.feed(MAGIC + b" {" + b" " * 900)
    with pytest.raises(FrameRejected):
        decoder.feed(b" " * 200)


def test_line_splitter_cuts_long_lines_and_keeps_at_most_one_piece() -> None:
    splitter = LineSplitter(max_line=10)
    assert splitter.feed(b"ab\ncd") == [b"ab\n"]
    assert splitter.feed(b"e\n") == [b"cde\n"]
    assert splitter.feed(b"x" * 25) == [b"x" * 10 + b"\n", b"x" * 10 + b"\n"]
    assert len(splitter._partial) == 5
    assert splitter.feed(b"y" * 12 + b"\n") == [b"x" * 5 + b"y" * 5 + b"\n", b"y" * 7 + b"\n"]
    assert splitter.flush() == []
    assert splitter.feed(b"end") == [] and splitter.flush() == [b"end\n"]


def test_line_splitter_does_not_cut_inside_a_utf8_character() -> None:
    splitter = LineSplitter(max_line=4)
    pieces = splitter.feed("aaa\u00e9\u00e9\n".encode())
    assert all(piece.decode() for piece in pieces)  # every piece is valid UTF-8
    assert b"".join(p.rstrip(b"\n") for p in pieces).decode() == "aaa\u00e9\u00e9"


def test_line_splitter_memory_is_bounded_without_newlines() -> None:
    splitter = LineSplitter()
    total = 0
    for _ in range(100):
        total += sum(len(line) - 1 for line in splitter.feed(b"z" * 65536))
        assert len(splitter._partial) <= MAX_LINE_BYTES
    assert total + len(splitter._partial) == 100 * 65536


def test_tail_buffer_keeps_exactly_the_last_characters() -> None:
    tail = TailBuffer(10)
    tail.extend(["START\n", "a" * 3 + "\n"])
    assert "".join(tail.lines()) == "START\naaa\n"
    tail.extend(["0123456789abcdef\n"])
    assert "".join(tail.lines()) == "789abcdef\n"
    for _ in range(1000):
        tail.extend(["x" * 100 + "\n"])
    assert "".join(tail.lines()) == "x" * 9 + "\n" and len(tail.lines()) == 1
    tail.extend(["1\n", "2\n"])
    assert "".join(tail.lines()) == "xxxxx\n1\n2\n"
