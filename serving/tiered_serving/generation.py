"""From generated tokens to released text: UTF-8 reassembly, stop sequences, and logprobs from logits.

Owns: `events`, the one generation loop (limits, stop sequences, finish reason) over any iterable of
generated tokens; `TextAssembler`, which takes one token at a time (its bytes and optional `TokenLogprob`) and says
what text (and which tokens' logprobs) may be released now, holding back only what could still turn into
a stop sequence; and `token_logprobs`, the log-softmax of one row of logits with its top alternatives.
Streaming and non-streaming answers are both built from what the assembler releases, so a stream adds up
to the non-streamed text by construction.

Pure: no engine, no I/O (numpy only for the logits row).
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from tiered_serving.openai_api import TokenLogprob


@dataclass
class Released:
    """Text that may be sent now and the tokens it came from; `stopped` once a stop sequence matched."""

    text: str = ""
    tokens: list[TokenLogprob] = field(default_factory=list)
    stopped: bool = False


@dataclass
class _Pending:
    text: str
    logprob: TokenLogprob | None


class TextAssembler:
    """Token-granular release: a token is held while its text ends in something a stop sequence starts with.

    A stop sequence ends the text before it (the stop itself is never returned, as OpenAI does). Bytes of a
    character split across tokens are joined before any text is released.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[_Pending] = []
        self.stopped = False

    def feed(self, piece: bytes, logprob: TokenLogprob | None = None) -> Released:
        if self.stopped:
            return Released(stopped=True)
        self._pending.append(_Pending(self._decoder.decode(piece), logprob))
        held = "".join(p.text for p in self._pending)
        cut = _first_stop(held, self._stops)
        if cut is not None:
            self.stopped = True
            return self._release_through(cut, text_end=cut, stopped=True)
        keep = _longest_stop_prefix_suffix(held, self._stops)
        return self._release_through(len(held) - keep, text_end=None, stopped=False)

    def finish(self) -> Released:
        """The end of generation (EOS or a limit): everything still held is released."""
        if self.stopped:
            return Released(stopped=True)
        self._pending.append(_Pending(self._decoder.decode(b"", final=True), None))
        held = "".join(p.text for p in self._pending)
        return self._release_through(len(held), text_end=None, stopped=False)

    def _release_through(self, boundary: int, *, text_end: int | None, stopped: bool) -> Released:
        """Release the pending tokens whose text ends at or before `boundary` (all that start before it on a
        stop), their text cut at `text_end` when given."""
        released = Released(stopped=stopped)
        position = 0
        count = 0
        for pending in self._pending:
            end = position + len(pending.text)
            fits = position < boundary if stopped else end <= boundary
            if not fits:
                break
            position = end
            count += 1
        taken, self._pending = self._pending[:count], self._pending[count:]
        text = "".join(p.text for p in taken)
        released.text = text[:text_end] if text_end is not None else text
        released.tokens = [p.logprob for p in taken if p.logprob is not None]
        if stopped:
            self._pending = []
        return released


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _longest_stop_prefix_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is the beginning of some stop sequence (not a whole one)."""
    best = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:length]):
                best = length
                break
    return best


LOWEST_LOGPROB = -9999.0
"""What OpenAI reports for a token the model all but rules out (JSON has no -Infinity)."""


def _bounded(logprob: float) -> float:
    return max(LOWEST_LOGPROB, min(0.0, logprob)) if logprob == logprob else LOWEST_LOGPROB


def token_logprobs(
    logits: npt.NDArray[np.float32], token: int, top: int, piece: Callable[[int], bytes]
) -> TokenLogprob:
    """The chosen token's log-probability under the model's distribution (before sampling filters) and the
    `top` most likely tokens; `piece` turns a token id into its bytes."""
    row = logits.astype(np.float64, copy=False)
    shifted = row - row.max()
    log_normalizer = float(np.log(np.exp(shifted).sum()))
    chosen = _bounded(float(shifted[token]) - log_normalizer)
    alternatives: tuple[tuple[bytes, float], ...] = ()
    if top > 0:
        best = np.argpartition(shifted, -top)[-top:]
        best = best[np.argsort(shifted[best])[::-1]]
        alternatives = tuple((piece(int(i)), _bounded(float(shifted[i]) - log_normalizer)) for i in best)
    return TokenLogprob(token=piece(token), logprob=chosen, top=alternatives)


@dataclass(frozen=True)
class Delta:
    """Text to send now, with the logprobs of the tokens it came from."""

    text: str
    tokens: list[TokenLogprob]


@dataclass(frozen=True)
class Finished:
    finish_reason: Literal["stop", "length"]
    completion_tokens: int


def events(
    steps: Iterable[tuple[bytes, TokenLogprob | None]], stops: tuple[str, ...], limit: int
) -> Iterator[Delta | Finished]:
    """Deltas, then one `Finished`: `stop` on end-of-generation or a stop sequence, `length` at `limit`
    tokens. `steps` yields each generated token's bytes (and logprobs) and ends at end-of-generation."""
    assembler = TextAssembler(stops)
    count = 0
    reason: Literal["stop", "length"] = "stop"
    for piece, logprob in steps:
        count += 1
        released = assembler.feed(piece, logprob)
        if released.text or released.tokens:
            yield Delta(released.text, released.tokens)
        if released.stopped:
            yield Finished("stop", count)
            return
        if count >= limit:
            reason = "length"
            break
    tail = assembler.finish()
    if tail.text or tail.tokens:
        yield Delta(tail.text, tail.tokens)
    yield Finished(reason, count)
