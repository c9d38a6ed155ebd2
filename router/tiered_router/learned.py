"""The learned router's head: from a request's text and its sentence embeddings to P(needs the frontier tier).

A head is package data (`tiered_router/heads/<name>.json`), trained by `scripts/train_router.py`
(`make train-router`) on the project's labelled prompts (`data/routing/`); training and serving compute
features with the functions here, so a head works unchanged wherever the package is installed.

Two models, blended (`score = (1 - ngram_weight) · p_embedding + ngram_weight · p_ngram`):
- logistic regression over two int8 all-MiniLM-L6-v2 embeddings — of the last user message (head and tail
  kept when long) and of its last paragraph (after a long document, that is the question) — plus a few
  surface counts (length, numbers, question marks);
- logistic regression over hashed word unigrams and bigrams (digits folded to `#`): the wording cues
  ("is this enforceable", "how many … if") that mean-pooled embeddings blur.
Each is trained on its own; the blend weight and the operating threshold are picked by cross-validation.
Standardisation is folded into the weights, so scoring is two dot products.

Pure: numpy only, no I/O besides reading the package's own head files.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import zlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np
from numpy.typing import NDArray

HEAD_FORMAT = 2
_WORD = re.compile(r"\w+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NGRAM_TOKEN = re.compile(r"[a-z]+|\d+")
_PARAGRAPH = re.compile(r"\n\s*\n")
TAIL_CHARS = 400

SURFACE_FEATURES = ("log_words", "log_tail_words", "log_numbers", "questions", "log_lines")


def tail_text(text: str) -> str:
    """The last paragraph (its last TAIL_CHARS characters): the question that follows a document."""
    parts = [part for part in _PARAGRAPH.split(text.strip()) if part.strip()]
    return (parts[-1] if parts else text)[-TAIL_CHARS:]


def surface_features(text: str) -> list[float]:
    """Counts over the last user message, in `SURFACE_FEATURES` order."""
    return [
        math.log1p(len(_WORD.findall(text))),
        math.log1p(len(_WORD.findall(tail_text(text)))),
        math.log1p(len(_NUMBER.findall(text))),
        min(text.count("?"), 5) / 5,
        math.log1p(text.count("\n")),
    ]


def ngram_buckets(text: str, buckets: int) -> list[int]:
    """Hashed word unigrams and bigrams of `text` (lower-cased, numbers as `#`), each bucket once."""
    words = ["#" if word[0].isdigit() else word for word in _NGRAM_TOKEN.findall(text.lower())]
    grams = {*words, *(f"{a} {b}" for a, b in itertools.pairwise(words))}
    return sorted({zlib.crc32(gram.encode()) % buckets for gram in grams})


def embedding_features(text: str, full: NDArray[np.float32], tail: NDArray[np.float32]) -> NDArray[np.float32]:
    """The embedding model's input: both embeddings, then the surface counts."""
    return np.concatenate([full, tail, np.asarray(surface_features(text), dtype=np.float32)]).astype(np.float32)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-min(30.0, max(-30.0, z))))


@dataclass(frozen=True)
class RouteHead:
    name: str
    version: str
    full_tokens: int
    """Token budget of the whole-message embedding."""
    tail_tokens: int
    """Token budget of the last-paragraph embedding."""
    embedding_weights: NDArray[np.float32]
    embedding_bias: float
    ngram_weights: NDArray[np.float32]
    ngram_bias: float
    ngram_weight: float
    threshold: float
    """The operating point chosen at training (in the head's metrics); policies set their own."""

    def score(self, text: str, full: NDArray[np.float32], tail: NDArray[np.float32]) -> float:
        """P(needs the frontier) for one request's last user message and its two embeddings."""
        p_embedding = _sigmoid(
            float(embedding_features(text, full, tail) @ self.embedding_weights) + self.embedding_bias
        )
        buckets = ngram_buckets(text, len(self.ngram_weights))
        p_ngram = _sigmoid(float(self.ngram_weights[buckets].sum()) + self.ngram_bias)
        return (1 - self.ngram_weight) * p_embedding + self.ngram_weight * p_ngram

    def to_json(self, metrics: dict[str, object]) -> str:
        return json.dumps(
            {
                "format": HEAD_FORMAT,
                "name": self.name,
                "version": self.version,
                "fullTokens": self.full_tokens,
                "tailTokens": self.tail_tokens,
                "surfaceFeatures": list(SURFACE_FEATURES),
                "threshold": self.threshold,
                "ngramWeight": self.ngram_weight,
                "metrics": metrics,
                "embeddingBias": self.embedding_bias,
                "ngramBias": self.ngram_bias,
                "embeddingWeights": [round(float(v), 6) for v in self.embedding_weights],
                "ngramWeights": [round(float(v), 6) for v in self.ngram_weights],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> RouteHead:
        data = json.loads(text)
        if data.get("format") != HEAD_FORMAT or data.get("surfaceFeatures") != list(SURFACE_FEATURES):
            raise ValueError(f"head {data.get('name')!r} was trained for another feature set; run make train-router")
        return cls(
            name=data["name"],
            version=data["version"],
            full_tokens=int(data["fullTokens"]),
            tail_tokens=int(data["tailTokens"]),
            embedding_weights=np.asarray(data["embeddingWeights"], dtype=np.float32),
            embedding_bias=float(data["embeddingBias"]),
            ngram_weights=np.asarray(data["ngramWeights"], dtype=np.float32),
            ngram_bias=float(data["ngramBias"]),
            ngram_weight=float(data["ngramWeight"]),
            threshold=float(data["threshold"]),
        )


class UnknownHead(ValueError):
    pass


def head_names() -> list[str]:
    files = resources.files("tiered_router.heads").iterdir()
    return sorted(p.name.removesuffix(".json") for p in files if p.name.endswith(".json"))


@cache
def load_head(name: str) -> RouteHead:
    """A head the package ships, by name; raises UnknownHead naming the ones there are."""
    path = resources.files("tiered_router.heads") / f"{name}.json"
    if not path.is_file():
        raise UnknownHead(f"classifier head {name!r} is not shipped (heads: {', '.join(head_names()) or 'none'})")
    return RouteHead.from_json(path.read_text())
