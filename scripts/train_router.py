"""Train the learned router's head (`make train-router`): router/tiered_router/heads/<name>.json.

Data: the project's labelled prompts, `data/routing/` (README there). The training files
(`tiered_devstack.routing_data.TRAIN_FILES`) train; `cedar.jsonl`, written by another author, is never
trained on nor used to pick anything: it is scored once, at the end, and the numbers are written into the
head's metrics (bench/routing_eval.py measures it again through a real router).

Models (`tiered_router.learned`): logistic regression (Newton's method, L2) over the two int8 MiniLM
embeddings and surface counts; logistic regression (Adam, L2) over hashed word uni/bigrams; blended. The L2
strengths are picked by 5-fold cross-validation on the training files (log loss), folds grouped so a
near-duplicate pair stays in one fold; the blend weight and the threshold are the cross-validated best
accuracy among those keeping at most `--max-kept-small` of frontier-needing prompts on the small tier.
Deterministic: same data, same head.

Run: `.venv/bin/python scripts/train_router.py [--name route-v1]` (about two minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
from tiered_devstack.routing_data import HELD_OUT_FILES, ROUTING_DIR, TRAIN_FILES, Labelled, load_labelled
from tiered_router.config import DEFAULT_ROUTE_HEAD
from tiered_router.encoder import Encoder
from tiered_router.learned import RouteHead, embedding_features, ngram_buckets, tail_text

ROOT = Path(__file__).resolve().parents[1]
HEADS = ROOT / "router" / "tiered_router" / "heads"
FULL_TOKENS, TAIL_TOKENS = 64, 32
"""Token budgets of the two embeddings: 64 + 32 tokens keep the decision near 10 ms on one core
(bench/routing_decision.py); 96 or 128 for the whole message scored no better in cross-validation."""
NGRAM_BUCKETS = 4096
EMBEDDING_L2 = (10.0, 30.0, 100.0)
NGRAM_L2 = (100.0, 300.0, 1000.0)


def fit_newton(x: np.ndarray, y: np.ndarray, lam: float, steps: int = 25) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method (the bias is not regularised)."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(d + 1)
    penalty = np.full(d + 1, lam)
    penalty[-1] = 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(xb @ w, -30, 30)))
        gradient = xb.T @ (p - y) + penalty * w
        hessian = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-6:
            break
    return w[:-1], float(w[-1])


def fit_adam(
    x: np.ndarray, y: np.ndarray, lam: float, steps: int = 400, rate: float = 0.05
) -> tuple[np.ndarray, float]:
    """The same model by Adam (thousands of sparse columns: no Hessian)."""
    n, d = x.shape
    w, b = np.zeros(d, np.float32), 0.0
    m, v = np.zeros(d, np.float32), np.zeros(d, np.float32)
    for t in range(1, steps + 1):
        p = 1 / (1 + np.exp(-np.clip(x @ w + b, -30, 30)))
        g = x.T @ (p - y) / n + lam * w / n
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        w -= rate * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        b -= rate * float((p - y).mean())
    return w, b


def fit_folded(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    """Fit on standardised columns, return weights for raw columns (standardisation folded in)."""
    mean, scale = x.mean(0), x.std(0) + 1e-6
    fit = fit_newton if x.shape[1] < 2000 else fit_adam
    w, b = fit((x - mean) / scale, y, lam)
    return (w / scale).astype(np.float32), float(b - (w * mean / scale).sum())


def predict(x: np.ndarray, weights: np.ndarray, bias: float) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(x @ weights + bias, -30, 30)))


def folds(rows: list[Labelled], k: int = 5) -> np.ndarray:
    """Fold of each row; rows of one near-duplicate pair share a fold (stable hash of the pair or id)."""
    return np.asarray([int(hashlib.sha256((r.pair or r.id).encode()).hexdigest(), 16) % k for r in rows])


def out_of_fold(x: np.ndarray, y: np.ndarray, fold: np.ndarray, lam: float) -> np.ndarray:
    scores = np.zeros(len(y))
    for f in np.unique(fold):
        w, b = fit_folded(x[fold != f], y[fold != f], lam)
        scores[fold == f] = predict(x[fold == f], w, b)
    return scores


def log_loss(scores: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(y * np.log(scores + 1e-9) + (1 - y) * np.log(1 - scores + 1e-9)))


def best_l2(x: np.ndarray, y: np.ndarray, fold: np.ndarray, grid: tuple[float, ...]) -> tuple[float, np.ndarray]:
    cv = {lam: out_of_fold(x, y, fold, lam) for lam in grid}
    lam = min(cv, key=lambda k: log_loss(cv[k], y))
    return lam, cv[lam]


def rates(scores: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    frontier = scores >= threshold
    needs = y == 1
    return {
        "accuracy": round(float((frontier == needs).mean()), 4),
        "frontierKeptSmall": round(float((~frontier & needs).sum() / max(1, needs.sum())), 4),
        "smallSentFrontier": round(float((frontier & ~needs).sum() / max(1, (~needs).sum())), 4),
        "frontierShare": round(float(frontier.mean()), 4),
    }


def pick_threshold(scores: np.ndarray, y: np.ndarray, max_kept_small: float) -> tuple[float, float]:
    """(threshold, accuracy): the best accuracy keeping at most `max_kept_small` of frontier work small."""
    best = (0.05, 0.0)
    for t in np.round(np.arange(0.05, 0.951, 0.01), 2):
        r = rates(scores, y, float(t))
        if r["frontierKeptSmall"] <= max_kept_small and r["accuracy"] > best[1]:
            best = (float(t), r["accuracy"])
    return best


def featurise(encoder: Encoder, rows: list[Labelled]) -> tuple[np.ndarray, np.ndarray]:
    """(embedding features, hashed n-gram indicators), one text per encoder run as the router does."""
    started = time.perf_counter()
    dense, grams = [], np.zeros((len(rows), NGRAM_BUCKETS), np.float32)
    for i, row in enumerate(rows):
        full = encoder.embed([row.prompt], FULL_TOKENS)[0]
        tail = encoder.embed([tail_text(row.prompt)], TAIL_TOKENS)[0]
        dense.append(embedding_features(row.prompt, full, tail))
        grams[i, ngram_buckets(row.prompt, NGRAM_BUCKETS)] = 1.0
    print(f"featurised {len(rows)} prompts in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return np.vstack(dense), grams


def data_digest(names: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update((ROUTING_DIR / name).read_bytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", default=DEFAULT_ROUTE_HEAD)
    parser.add_argument(
        "--max-kept-small",
        type=float,
        default=0.08,
        help="most frontier-needing training prompts (cross-validated) the threshold may keep small",
    )
    args = parser.parse_args()

    encoder = Encoder.load()
    train, held_out = load_labelled(TRAIN_FILES), load_labelled(HELD_OUT_FILES)
    (dense, grams), y = featurise(encoder, train), np.asarray([r.frontier for r in train], dtype=float)
    fold = folds(train)
    dense_l2, dense_cv = best_l2(dense, y, fold, EMBEDDING_L2)
    ngram_l2, ngram_cv = best_l2(grams, y, fold, NGRAM_L2)
    best = (0.0, 0.0, 0.5)  # (accuracy, blend weight, threshold)
    for weight in np.round(np.arange(0.0, 0.71, 0.05), 2):
        threshold, accuracy = pick_threshold((1 - weight) * dense_cv + weight * ngram_cv, y, args.max_kept_small)
        if accuracy > best[0]:
            best = (accuracy, float(weight), threshold)
    _, weight, threshold = best
    blended_cv = (1 - weight) * dense_cv + weight * ngram_cv
    print(f"l2 {dense_l2}/{ngram_l2}, n-gram weight {weight}, threshold {threshold}", file=sys.stderr)

    dense_w, dense_b = fit_folded(dense, y, dense_l2)
    ngram_w, ngram_b = fit_folded(grams, y, ngram_l2)
    digest = data_digest(TRAIN_FILES)
    head = RouteHead(
        args.name,
        f"{args.name}+{digest[:12]}",
        FULL_TOKENS,
        TAIL_TOKENS,
        dense_w,
        dense_b,
        ngram_w,
        ngram_b,
        weight,
        threshold,
    )
    held_dense, held_grams = featurise(encoder, held_out)
    held_scores = (1 - weight) * predict(held_dense, dense_w, dense_b) + weight * predict(held_grams, ngram_w, ngram_b)
    metrics = {
        "trainFiles": list(TRAIN_FILES),
        "trainSha256": digest,
        "trainPrompts": len(train),
        "l2": {"embedding": dense_l2, "ngram": ngram_l2},
        "crossValidated": rates(blended_cv, y, threshold),
        "heldOut": {
            "files": list(HELD_OUT_FILES),
            "prompts": len(held_out),
            **rates(held_scores, np.asarray([r.frontier for r in held_out], dtype=float), threshold),
        },
    }
    HEADS.mkdir(parents=True, exist_ok=True)
    (HEADS / f"{args.name}.json").write_text(head.to_json(metrics) + "\n")
    print(f"wrote {HEADS / (args.name + '.json')}: {metrics}")


if __name__ == "__main__":
    main()
