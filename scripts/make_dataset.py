"""Generate the bundled instruction dataset: task families whose short answers can be checked exactly.

Rows are in the seed's instruction/input/output format plus a `task` field (for per-family metrics), some with
`input` and some without. The eval file holds new instances: no (instruction, input) pair of it is in train.

The bundled files: `--train 480 --eval 120 --more 360 --valid 90` (the first 480 train rows and the eval rows are
those of the original 480/120 split; 360 more new instances, none in eval, follow them in train.jsonl; then 90
validation rows, in neither, for early stopping and checkpoint selection, so that eval.jsonl is never selected on).
`--extra N` appends N more train rows drawn after the validation rows: a larger training set with the same eval and
validation rows (families with few distinct instances, such as letter counts, run out and drop out of the turn).
Usage: python scripts/make_dataset.py [--train 480] [--eval 120] [--more 360] [--valid 90] [--extra 0]
       [--out data/tasks]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

WORDS = (
    "apple river stone garden window candle silver rocket planet forest mirror bridge pencil orange castle "
    "thunder basket dragon jacket lemon marble needle ocean pepper rabbit saddle tiger violin wagon yellow "
    "anchor button cactus desert engine falcon glacier harbor island jungle kettle ladder meadow nickel "
    "oyster parrot quartz ribbon shadow tunnel velvet walnut zebra copper feather helmet lantern magnet "
    "blanket cherry dolphin eagle fabric guitar hammer igloo jigsaw kitten lobster mango noodle orchid "
    "peanut quilt raven salmon teapot umbrella vessel whistle yogurt acorn bamboo camel dentist elbow "
    "ferry goblet hazel insect jasmine koala lizard muffin nectar onion pillow quiver radish spider "
    "tomato urchin valley waffle badger coffee donkey easel fossil ginger hornet iris jelly kernel"
).split()
NAMES = "Alice Bruno Chen Dara Elif Farid Grace Hugo Ines Jonas Keiko Liam Mira Nadia Omar Priya".split()
CITIES = "Lisbon Oslo Cairo Lima Perth Quito Riga Seoul Tunis Vienna Dakar Hanoi".split()


def arithmetic(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    op = rng.choice(["add", "subtract", "multiply"])
    if op == "add":
        return "Add the two numbers.", f"{a} and {b}", str(a + b)
    if op == "subtract":
        a, b = max(a, b), min(a, b)
        return "Subtract the second number from the first.", f"{a} and {b}", str(a - b)
    a = rng.randint(2, 12)
    return f"What is {a} times {b}?", "", str(a * b)


def reverse_word(rng):
    word = rng.choice(WORDS)
    return "Reverse the letters of the word.", word, word[::-1]


def uppercase(rng):
    text = " ".join(rng.sample(WORDS, 2))
    return "Convert the text to uppercase.", text, text.upper()


def unit_conversion(rng):
    kind = rng.choice(["km", "kg", "min"])
    n = rng.randint(2, 40)
    if kind == "km":
        return "Convert kilometers to meters.", f"{n} km", f"{n * 1000} m"
    if kind == "kg":
        return "Convert kilograms to grams.", f"{n} kg", f"{n * 1000} g"
    return f"How many seconds are in {n} minutes?", "", f"{n * 60} seconds"


def extract_year(rng):
    year, name, city = rng.randint(1800, 2023), rng.choice(NAMES), rng.choice(CITIES)
    sentence = rng.choice(
        [
            f"{name} moved to {city} in {year} and opened a small bakery.",
            f"The bridge in {city} was finished in {year} after long delays.",
            f"In {year}, {name} won the chess championship held in {city}.",
        ]
    )
    return "Extract the year from the sentence.", sentence, str(year)


def parity(rng):
    n = rng.randint(1, 999)
    return "Is the number even or odd? Answer with one word.", str(n), "even" if n % 2 == 0 else "odd"


def sort_words(rng):
    words = rng.sample(WORDS, 4)
    return "Sort the words alphabetically.", ", ".join(words), ", ".join(sorted(words))


def count_letters(rng):
    word = rng.choice(WORDS)
    return f"How many letters are in the word '{word}'?", "", str(len(word))


def first_letter(rng):
    words = rng.sample(WORDS, 3)
    return "Give the first letter of each word.", " ".join(words), "".join(w[0] for w in words)


TASKS = {
    "arithmetic": arithmetic,
    "reverse_word": reverse_word,
    "uppercase": uppercase,
    "unit_conversion": unit_conversion,
    "extract_year": extract_year,
    "parity": parity,
    "sort_words": sort_words,
    "count_letters": count_letters,
    "first_letter": first_letter,
}


def generate(n: int, rng: random.Random, exclude: set) -> list[dict]:
    """`n` new rows, the families in turn; a family with no new instance left drops out of the turn."""
    rows, seen = [], set(exclude)
    names = list(TASKS)
    while len(rows) < n:
        if not names:
            raise SystemExit(f"the task families have too few distinct instances for {n} rows")
        task = names[len(rows) % len(names)]
        for _ in range(10_000):
            instruction, input_text, output = TASKS[task](rng)
            if (instruction, input_text) not in seen:
                break
        else:
            names.remove(task)
            continue
        seen.add((instruction, input_text))
        rows.append({"instruction": instruction, "input": input_text, "output": output, "task": task})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=480)
    parser.add_argument("--eval", type=int, default=120)
    parser.add_argument("--more", type=int, default=360, help="train rows drawn after the eval rows")
    parser.add_argument("--valid", type=int, default=90, help="validation rows, drawn last, in neither file")
    parser.add_argument("--extra", type=int, default=0, help="train rows drawn after the validation rows")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "data" / "tasks")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    train = generate(args.train, rng, set())
    evaluation = generate(args.eval, rng, {(r["instruction"], r["input"]) for r in train})
    train += generate(args.more, rng, {(r["instruction"], r["input"]) for r in train + evaluation})
    validation = generate(args.valid, rng, {(r["instruction"], r["input"]) for r in train + evaluation})
    train += generate(args.extra, rng, {(r["instruction"], r["input"]) for r in train + evaluation + validation})
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("eval", evaluation), ("valid", validation)):
        path = args.out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        print(f"wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    main()
