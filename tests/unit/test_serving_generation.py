"""tiered_serving.generation and .busy: stop sequences, UTF-8 reassembly, limits, logprobs, busy ratio."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tiered_serving.busy import BusyWindow
from tiered_serving.generation import LOWEST_LOGPROB, Delta, Finished, TextAssembler, events, token_logprobs
from tiered_serving.openai_api import TokenLogprob


def steps(*pieces: str | bytes) -> list[tuple[bytes, TokenLogprob | None]]:
    out: list[tuple[bytes, TokenLogprob | None]] = []
    for piece in pieces:
        raw = piece.encode() if isinstance(piece, str) else piece
        out.append((raw, TokenLogprob(raw, -0.1)))
    return out


def run(pieces: list[tuple[bytes, TokenLogprob | None]], stops: tuple[str, ...] = (), limit: int = 100):
    produced = list(events(pieces, stops, limit))
    deltas = [e for e in produced if isinstance(e, Delta)]
    finished = produced[-1]
    assert isinstance(finished, Finished)
    assert all(not isinstance(e, Finished) for e in produced[:-1])
    return "".join(d.text for d in deltas), [t.token for d in deltas for t in d.tokens], finished, deltas


def test_without_stops_every_token_is_released_at_once() -> None:
    text, tokens, finished, deltas = run(steps("Hel", "lo", " world"))
    assert text == "Hello world" and len(deltas) == 3
    assert tokens == [b"Hel", b"lo", b" world"]
    assert finished == Finished("stop", 3)


def test_the_limit_ends_with_length() -> None:
    text, _, finished, _ = run(steps("a", "b", "c", "d"), limit=2)
    assert (text, finished) == ("ab", Finished("length", 2))


@pytest.mark.parametrize(
    ("pieces", "stops", "text"),
    [
        (("Hello", " END", " more"), ("END",), "Hello "),
        (("Hel", "lo E", "N", "D tail"), ("END",), "Hello "),  # the stop spans three tokens
        (("a", "b", "c"), ("bc", "b"), "a"),  # the earliest match wins
        (("x\n", "\n", "y"), ("\n\n",), "x"),
        (("E", "N", "x"), ("END",), "ENx"),  # a prefix that does not complete is released
    ],
)
def test_stop_sequences_end_the_text_before_them(pieces: tuple[str, ...], stops: tuple[str, ...], text: str) -> None:
    got, _, finished, _ = run(steps(*pieces), stops)
    assert got == text
    assert finished.finish_reason == "stop"


def test_a_possible_stop_prefix_is_held_back_then_released() -> None:
    assembler = TextAssembler(("END",))
    assert assembler.feed(b"ok E").text == ""  # the token ends in "E", which END starts with: held whole
    held = assembler.feed(b"x")
    assert held.text == "ok Ex"
    assert not held.stopped


def test_stream_deltas_add_up_to_the_collected_text_for_any_split() -> None:
    whole = "The answer is 42.\nUser: next"
    for size in range(1, 6):
        pieces = [whole[i : i + size] for i in range(0, len(whole), size)]
        text, _, _, _ = run(steps(*pieces), ("\nUser:",))
        assert text == "The answer is 42."


def test_a_character_split_across_tokens_is_joined() -> None:
    raw = "né".encode()
    text, tokens, _, deltas = run(steps(raw[:2], raw[2:]))
    assert text == "né"
    assert tokens == [raw[:2], raw[2:]]
    assert "\ufffd" not in "".join(d.text for d in deltas)


def test_an_incomplete_character_at_the_end_becomes_a_replacement() -> None:
    text, _, _, _ = run(steps("a", b"\xc3"))
    assert text == "a\ufffd"


def test_token_logprobs_are_a_log_softmax_with_ordered_alternatives() -> None:
    logits = np.array([1.0, 3.0, 2.0, -1.0], dtype=np.float32)
    got = token_logprobs(logits, 2, 2, lambda i: f"t{i}".encode())
    normalizer = math.log(sum(math.exp(x) for x in logits))
    assert got.token == b"t2"
    assert got.logprob == pytest.approx(2.0 - normalizer)
    assert [alt for alt, _ in got.top] == [b"t1", b"t2"]
    assert all(lp <= 0 for _, lp in got.top)
    assert sum(math.exp(token_logprobs(logits, i, 0, lambda i: b"").logprob) for i in range(4)) == pytest.approx(1)


def test_impossible_tokens_get_openais_floor_not_minus_infinity() -> None:
    logits = np.array([0.0, -np.inf], dtype=np.float32)
    assert token_logprobs(logits, 1, 0, lambda i: b"").logprob == LOWEST_LOGPROB


def test_busy_ratio_counts_only_the_window() -> None:
    busy = BusyWindow(window_seconds=10)
    assert busy.ratio(100) == 0
    busy.start(100)
    busy.stop(104)
    assert busy.ratio(105) == pytest.approx(0.4)
    busy.start(108)
    assert busy.ratio(110) == pytest.approx(0.6)  # 4 s done + 2 s ongoing
    busy.stop(110)
    assert busy.ratio(112) == pytest.approx(0.4)  # 102–104 and 108–110
    assert busy.ratio(200) == 0
