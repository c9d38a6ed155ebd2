"""The llama.cpp engine of one replica: a thin, blocking layer over `llama_cpp.Llama`.

Owns: loading a GGUF file, turning chat messages into prompt tokens with the model's own chat template,
and `steps`, the token-by-token generation (bytes of each token and, when asked, its logprobs read from
the logits the token was sampled from). Everything else (limits, stop sequences, shaping) is pure and
lives in `generation` and `openai_api`.

Blocking and not thread-safe (one llama.cpp context): the caller runs one generation at a time, off the
event loop. Must not know about HTTP or Ray.
"""

from __future__ import annotations

import ctypes
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import llama_cpp
import numpy as np
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from tiered_serving.generation import token_logprobs
from tiered_serving.openai_api import ApiError, TokenLogprob

# The template llama-cpp-python falls back to when a GGUF carries none (ChatML, which SmolLM2 also uses).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Sampling:
    """What the sampler needs, in OpenAI's terms (temperature 0 is greedy; no top-k or min-p cut)."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass(frozen=True)
class Prompt:
    tokens: list[int]
    stops: tuple[str, ...] = ()
    """Stop strings the chat template adds (e.g. its end-of-turn text), besides the request's own."""


class LlamaEngine:
    def __init__(self, path: Path, *, n_ctx: int, n_threads: int, n_batch: int = 512) -> None:
        self.llama = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=min(n_batch, n_ctx),
            n_threads=n_threads,
            n_threads_batch=n_threads,
            logits_all=False,  # logprobs come from the last row only: no n_ctx × vocab score matrix
            verbose=False,
        )
        self.n_ctx = self.llama.n_ctx()
        self.n_vocab = self.llama.n_vocab()
        self._vocab = self.llama._model.vocab  # the end-of-generation test is only on the low-level API
        eos = self.llama.token_eos()
        bos = self.llama.token_bos()
        self._chat = Jinja2ChatFormatter(
            template=self.llama.metadata.get("tokenizer.chat_template", CHATML_TEMPLATE),
            eos_token=self._text_of(eos),
            bos_token=self._text_of(bos),
            stop_token_ids=[eos],
        )

    def _text_of(self, token: int) -> str:
        return self.llama.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""

    def piece(self, token: int) -> bytes:
        return self.llama.detokenize([token])

    def chat_prompt(self, messages: list[dict[str, Any]]) -> Prompt:
        try:
            formatted = self._chat(messages=cast(Any, messages))  # plain role/content dicts, as its TypedDicts
        except Exception as error:  # the template's own raise_exception(), e.g. roles out of order
            message = f"messages: the model's chat template refused them: {error}"
            raise ApiError(400, message, param="messages") from None
        tokens = self.llama.tokenize(formatted.prompt.encode(), add_bos=not formatted.added_special, special=True)
        stop = formatted.stop
        stops = () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)
        return Prompt(tokens, tuple(s for s in stops if s))

    def completion_prompt(self, text: str) -> Prompt:
        return Prompt(self.llama.tokenize(text.encode(), add_bos=True, special=False))

    def steps(
        self, prompt: Prompt, sampling: Sampling, logprobs: int | None
    ) -> Generator[tuple[bytes, TokenLogprob | None], None, None]:
        """Generated tokens until end-of-generation (never yielded); the caller stops on limits by closing it.

        Whatever the context already holds from the previous request is reused as far as the prompts share
        a prefix (llama-cpp-python compares the tokens).
        """
        self.llama.set_seed(llama_cpp.LLAMA_DEFAULT_SEED if sampling.seed is None else sampling.seed % 2**32)
        tokens = self.llama.generate(
            prompt.tokens,
            temp=sampling.temperature,
            top_p=sampling.top_p,
            top_k=0,
            min_p=0.0,
            typical_p=1.0,
            repeat_penalty=1.0,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
        )
        try:
            for token in tokens:
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    return
                logprob = None
                if logprobs is not None:
                    # The logits this token was sampled from: the context's last row, until the next eval.
                    row = np.ctypeslib.as_array(
                        ctypes.cast(self.llama._ctx.get_logits_ith(-1), ctypes.POINTER(ctypes.c_float)),
                        shape=(self.n_vocab,),
                    )
                    logprob = token_logprobs(row, token, logprobs, self.piece)
                yield self.piece(token), logprob
        finally:
            tokens.close()
