"""The learned router's data and scores: the project's labelled prompts and RouteLLM's benchmarks.

`data/routing/*.jsonl` (see its README): prompts labelled `small` or `frontier`; `cedar.jsonl` is the split
never trained on. `data/routellm/` (Apache-2.0, from lm-sys/RouteLLM): per-prompt correctness of a weak and
a strong model on MMLU and GSM8K, scored the way RouteLLM scores routers (`routellm_curve`): a threshold at
each decile of the router's scores, APGR the normalised area under (strong-call share, accuracy), CPT(x)
the strong-call share that recovers x of the weak→strong gap. Used by `scripts/train_router.py`,
`bench/routing_eval.py` and the tests; never by the product.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
ROUTING_DIR = ROOT / "data" / "routing"
ROUTELLM_DIR = ROOT / "data" / "routellm"
TRAIN_FILES = ("alder.jsonl", "birch.jsonl", "dogwood.jsonl", "elm.jsonl")
HELD_OUT_FILES = ("cedar.jsonl",)
LABELS = ("small", "frontier")


@dataclass(frozen=True, slots=True)
class Labelled:
    id: str
    label: str
    task: str
    trap: str | None
    pair: str | None
    system: str | None
    prompt: str

    @property
    def frontier(self) -> bool:
        return self.label == "frontier"


def load_labelled(names: Sequence[str], directory: Path = ROUTING_DIR) -> list[Labelled]:
    rows = []
    for name in names:
        for number, line in enumerate((directory / name).read_text().splitlines(), 1):
            if not line.strip():
                continue
            data = json.loads(line)
            if data["label"] not in LABELS:
                raise ValueError(f"{name}:{number}: label {data['label']!r} is not one of {LABELS}")
            rows.append(
                Labelled(
                    data["id"],
                    data["label"],
                    data["task"],
                    data.get("trap"),
                    data.get("pair"),
                    data.get("system"),
                    data["prompt"],
                )
            )
    return rows


@dataclass(frozen=True, slots=True)
class Benchmark:
    name: str
    prompts: list[str]
    weak: np.ndarray
    """Whether the weak model (Mixtral-8x7B) answered each prompt correctly."""
    strong: np.ndarray
    """Whether the strong model (GPT-4-1106) did."""


WEAK, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"


def load_routellm(name: str, directory: Path = ROUTELLM_DIR) -> Benchmark:
    """`mmlu` (all 57 domains) or `gsm8k`, without the prompts RouteLLM marks as contaminated."""
    base = directory / name
    contaminated = {
        json.loads(line)["eval_prompt"]
        for line in (base / "contaminated_prompts.jsonl").read_text().splitlines()
        if line.strip()
    }
    files = sorted((base / "responses").glob("mmlu_*.csv")) if name == "mmlu" else [base / "gsm8k_responses.csv"]
    prompts, weak, strong = [], [], []
    for path in files:
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if row["prompt"] in contaminated:
                    continue
                prompts.append(row["prompt"])
                weak.append(row[WEAK] == "True")
                strong.append(row[STRONG] == "True")
    return Benchmark(name, prompts, np.asarray(weak), np.asarray(strong))


@dataclass(frozen=True, slots=True)
class Curve:
    points: list[tuple[float, float]]
    """(share of calls to the strong model, accuracy), by increasing share."""
    weak_accuracy: float
    strong_accuracy: float
    apgr: float

    def cpt(self, recovered: float) -> float:
        """Share of strong calls needed to recover `recovered` (0..1) of the weak→strong accuracy gap."""
        target = self.weak_accuracy + recovered * (self.strong_accuracy - self.weak_accuracy)
        shares, accuracies = zip(*self.points, strict=True)
        return float(np.interp(target, accuracies, shares))  # as RouteLLM does (accuracy is near monotone)


def routellm_curve(scores: np.ndarray, bench: Benchmark, cuts: int = 10) -> Curve:
    """RouteLLM's evaluation: thresholds at the scores' quantiles 0, 1/cuts, …, 1; at or above one goes strong
    (above, for the last, so one point sends nothing strong)."""
    thresholds = np.quantile(scores, np.linspace(0, 1, cuts + 1))
    points = []
    for i, threshold in enumerate(thresholds):
        strong = scores >= threshold if i < len(thresholds) - 1 else scores > threshold
        accuracy = float(np.where(strong, bench.strong, bench.weak).mean())
        points.append((float(strong.mean()), accuracy))
    points.sort()
    weak_accuracy, strong_accuracy = float(bench.weak.mean()), float(bench.strong.mean())
    shares = np.asarray([p[0] for p in points])
    auc = float(np.trapezoid([p[1] for p in points], shares))
    span = float(shares[-1] - shares[0])
    apgr = (auc - weak_accuracy * span) / ((strong_accuracy - weak_accuracy) * span)
    return Curve(points, weak_accuracy, strong_accuracy, apgr)


def operating_point(scores: np.ndarray, bench: Benchmark, threshold: float) -> dict[str, float]:
    """One deployed threshold on a benchmark: strong-call share, accuracy and the share of the gap recovered."""
    strong = scores >= threshold
    accuracy = float(np.where(strong, bench.strong, bench.weak).mean())
    weak, best = float(bench.weak.mean()), float(bench.strong.mean())
    return {
        "strongShare": float(strong.mean()),
        "accuracy": accuracy,
        "gapRecovered": (accuracy - weak) / (best - weak),
    }
