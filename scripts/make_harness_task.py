"""Build the bundled lm-evaluation-harness task the quickstart's forgetting line comes from: general knowledge the
quickstart's data never asks about (capitals, which word names a kind of thing, opposites), as multiple-choice
questions scored by log-likelihood, from the facts written below (no hub, no download).

Writes data/harness/general_knowledge.yaml (the task, its data file named relative to it) and
general_knowledge.jsonl. Run `sft eval RUN --tasks data/harness/general_knowledge.yaml --base` to see what a
fine-tune kept of it.
Usage: python scripts/make_harness_task.py [--out data/harness] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin", "Egypt": "Cairo",
    "Canada": "Ottawa", "Australia": "Canberra", "Russia": "Moscow", "China": "Beijing", "India": "New Delhi",
    "Kenya": "Nairobi", "Norway": "Oslo", "Sweden": "Stockholm", "Greece": "Athens", "Portugal": "Lisbon",
    "Argentina": "Buenos Aires", "Turkey": "Ankara", "Ireland": "Dublin", "Poland": "Warsaw", "Austria": "Vienna",
    "Peru": "Lima", "Thailand": "Bangkok", "South Korea": "Seoul", "Cuba": "Havana", "Finland": "Helsinki",
    "Chile": "Santiago", "Vietnam": "Hanoi", "Mexico": "Mexico City", "Brazil": "Brasilia",
}  # fmt: skip
KINDS = {
    "fruit": ["apple", "banana", "cherry", "grape"],
    "animal": ["horse", "lion", "rabbit", "whale"],
    "colour": ["red", "blue", "green", "purple"],
    "planet": ["Mars", "Venus", "Jupiter", "Saturn"],
    "metal": ["iron", "copper", "silver", "gold"],
    "musical instrument": ["violin", "piano", "guitar", "flute"],
    "vegetable": ["carrot", "potato", "onion", "cabbage"],
    "part of the body": ["elbow", "knee", "shoulder", "ankle"],
}
OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "day": "night", "fast": "slow", "happy": "sad", "open": "closed",
    "light": "dark", "early": "late", "full": "empty", "old": "young", "strong": "weak", "wet": "dry",
    "loud": "quiet", "hard": "soft", "rich": "poor",
}  # fmt: skip

TASK = """# Built by scripts/make_harness_task.py: general knowledge the quickstart's data never asks about, to see
# what a fine-tune forgot: sft eval RUN --tasks data/harness/general_knowledge.yaml --base
task: general_knowledge
dataset_path: json
dataset_kwargs:
  data_files:
    test: general_knowledge.jsonl   # read relative to this file by sft eval
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def question(text: str, answer: str, others: list[str], rng: random.Random) -> dict:
    """A question with its answer among three wrong choices, in a seeded order."""
    choices = [answer, *rng.sample(sorted(set(others) - {answer}), 3)]
    rng.shuffle(choices)
    return {"question": text, "choices": choices, "answer": choices.index(answer)}


def rows(seed: int) -> list[dict]:
    rng = random.Random(seed)
    capitals = [question(f"What is the capital of {c}?", a, list(CAPITALS.values()), rng) for c, a in CAPITALS.items()]
    kinds = []
    for kind, members in KINDS.items():
        strangers = [m for other, ms in KINDS.items() if other != kind for m in ms]
        kinds += [question(f"Which of these is a {kind}?", member, strangers, rng) for member in members]
    opposites = [
        question(f"What is the opposite of {w}?", a, list(OPPOSITES.values()) + list(OPPOSITES), rng)
        for w, a in OPPOSITES.items()
    ]
    return capitals + kinds + opposites


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "data" / "harness")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    made = rows(args.seed)
    (args.out / "general_knowledge.jsonl").write_text("".join(json.dumps(r) + "\n" for r in made), encoding="utf-8")
    (args.out / "general_knowledge.yaml").write_text(TASK, encoding="utf-8")
    print(f"wrote {len(made)} questions to {args.out / 'general_knowledge.jsonl'}")


if __name__ == "__main__":
    main()
