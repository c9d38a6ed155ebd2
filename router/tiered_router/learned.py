"""The learned router's head: from a request's text and its sentence embedding to P(needs the frontier tier).

A head is package data (`tiered_router/heads/<name>.json`), trained by `scripts/train_router.py`
(`make train-router`) on the project's labelled prompts (`data/routing/`); training and serving compute
features with the same function here, so a head works unchanged wherever the package is installed.

Features: the L2-normalised all-MiniLM-L6-v2 embedding of the last user message (head and tail kept when
long: the question often comes after a document), plus a few surface counts the embedding does not carry
well (length, how much text comes after the last paragraph break, numbers, question marks). Prompt length
alone ranks "needs the frontier" better than chance on public benchmarks; here it is one feature among them.
The model is logistic regression over standardised features; its output is a calibrated probability.

Pure: numpy only, no I/O besides reading the package's own head files.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np
from numpy.typing import NDArray

HEAD_FORMAT = 1
_WORD = re.compile(r"\w+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")

SURFACE_FEATURES = ("log_words", "log_tail_words", "log_numbers", "questions", "log_lines")


def surface_features(text: str) -> list[float]:
    """Counts over the last user message, in `SURFACE_FEATURES` order."""
    words = len(_WORD.findall(text))
    tail = text.rstrip().rsplit("\n\n", 1)[-1]
    return [
        math.log1p(words),
        math.log1p(len(_WORD.findall(tail))),
        math.log1p(len(_NUMBER.findall(text))),
        min(text.count("?"), 5) / 5,
        math.log1p(text.count("\n")),
    ]


def feature_vector(text: str, embedding: NDArray[np.float32]) -> NDArray[np.float32]:
    """The head's input for one request: embedding then surface features (unstandardised)."""
    return np.concatenate([embedding.astype(np.float32), np.asarray(surface_features(text), dtype=np.float32)])


@dataclass(frozen=True)
class RouteHead:
    """Logistic regression over standardised `feature_vector`s."""

    name: str
    version: str
    max_tokens: int
    """Encoder token budget the head was trained with (the router's `encoder.maxTokens` should match)."""
    mean: NDArray[np.float32]
    scale: NDArray[np.float32]
    weights: NDArray[np.float32]
    bias: float
    threshold: float
    """The operating point chosen at training (documented in the head's metrics); policies set their own."""

    def score(self, features: NDArray[np.float32]) -> NDArray[np.float32]:
        """P(needs the frontier) for a (n, d) batch (or one (d,) vector)."""
        z = ((features - self.mean) / self.scale) @ self.weights + self.bias
        return (1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))).astype(np.float32)

    def to_json(self, metrics: dict[str, object]) -> str:
        return json.dumps(
            {
                "format": HEAD_FORMAT,
                "name": self.name,
                "version": self.version,
                "maxTokens": self.max_tokens,
                "surfaceFeatures": list(SURFACE_FEATURES),
                "threshold": self.threshold,
                "bias": self.bias,
                "mean": [round(float(v), 6) for v in self.mean],
                "scale": [round(float(v), 6) for v in self.scale],
                "weights": [round(float(v), 6) for v in self.weights],
                "metrics": metrics,
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
            max_tokens=int(data["maxTokens"]),
            mean=np.asarray(data["mean"], dtype=np.float32),
            scale=np.asarray(data["scale"], dtype=np.float32),
            weights=np.asarray(data["weights"], dtype=np.float32),
            bias=float(data["bias"]),
            threshold=float(data["threshold"]),
        )


class UnknownHead(ValueError):
    pass


def head_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".json")
        for p in resources.files("tiered_router.heads").iterdir()
        if p.name.endswith(".json")
    )


@cache
def load_head(name: str) -> RouteHead:
    """A head the package ships, by name; raises UnknownHead naming the ones there are."""
    path = resources.files("tiered_router.heads") / f"{name}.json"
    if not path.is_file():
        raise UnknownHead(f"classifier head {name!r} is not shipped (heads: {', '.join(head_names()) or 'none'})")
    return RouteHead.from_json(path.read_text())
