"""Write examples/prompts/basic.jsonl: short questions with reference answers for `cascadia calibrate`.

Deterministic (fixed seed): `python scripts/make_calibration_prompts.py --check` verifies that the committed file is
exactly what this script makes. Five kinds of question, all written for this project: arithmetic, unit conversions,
dates and calendars, simple facts, and multiple choice. Every answer is computed here (arithmetic, conversions,
calendar dates with `datetime`) or is a fact from the tables below.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "examples" / "prompts" / "basic.jsonl"
SEED = 20261130
NUM_ONLY = "Answer with the number only."
WORD_ONLY = "Answer in one or two words."
LETTER_ONLY = "Answer with the letter of the correct option only."

CONVERSIONS = [  # (question unit, answer unit, factor)
    ("kilometres", "metres", 1000), ("metres", "centimetres", 100), ("centimetres", "millimetres", 10),
    ("kilograms", "grams", 1000), ("litres", "millilitres", 1000), ("hours", "minutes", 60),
    ("minutes", "seconds", 60), ("days", "hours", 24), ("weeks", "days", 7), ("feet", "inches", 12),
    ("yards", "feet", 3), ("dozens", "items", 12), ("years", "months", 12), ("tonnes", "kilograms", 1000),
]
FACTS = [  # (question, reference)
    ("What is the capital of France?", "Paris"), ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Spain?", "Madrid"), ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Japan?", "Tokyo"), ("What is the capital of Canada?", "Ottawa"),
    ("What is the capital of Egypt?", "Cairo"), ("What is the capital of Greece?", "Athens"),
    ("What is the capital of Portugal?", "Lisbon"), ("What is the capital of Russia?", "Moscow"),
    ("What is the capital of Norway?", "Oslo"), ("What is the capital of Kenya?", "Nairobi"),
    ("What is the capital of Australia?", "Canberra"), ("What is the capital of Peru?", "Lima"),
    ("What is the capital of Ireland?", "Dublin"), ("What is the capital of Poland?", "Warsaw"),
    ("What colour is the sky on a clear day?", "blue"), ("What colour is fresh grass?", "green"),
    ("What colour do you get by mixing blue and yellow?", "green"),
    ("What colour do you get by mixing red and white?", "pink"),
    ("Which planet is closest to the Sun?", "Mercury"), ("Which planet is known as the red planet?", "Mars"),
    ("What is the largest planet in the solar system?", "Jupiter"),
    ("Which planet has the most famous rings?", "Saturn"), ("What star is at the centre of our solar system?", "Sun"),
    ("What is the natural satellite of the Earth called?", "Moon"),
    ("What gas do plants take in from the air to make food?", "carbon dioxide"),
    ("What liquid do bees make from nectar?", "honey"), ("What is frozen water called?", "ice"),
    ("What is the chemical symbol for gold?", "Au"), ("What is the chemical symbol for water?", "H2O"),
    ("What is the chemical symbol for sodium?", "Na"), ("What is the chemical symbol for iron?", "Fe"),
    ("What animal is known as the king of the jungle?", "lion"),
    ("What is the largest mammal in the ocean?", "blue whale"), ("What does a caterpillar turn into?", "butterfly"),
    ("Which animal is famous for having a very long neck?", "giraffe"),
    ("What is the young of a dog called?", "puppy"), ("What is the young of a cat called?", "kitten"),
    ("What is the young of a cow called?", "calf"), ("Which ocean lies between Europe and North America?",
                                                    "Atlantic"),
    ("What is the largest ocean on Earth?", "Pacific"), ("On which continent is Brazil?", "South America"),
    ("On which continent is Egypt?", "Africa"), ("What language is mainly spoken in Brazil?", "Portuguese"),
    ("What language is mainly spoken in Mexico?", "Spanish"), ("Who wrote the play Romeo and Juliet?",
                                                               "Shakespeare"),
    ("What is the opposite of hot?", "cold"), ("What is the opposite of up?", "down"),
    ("What is the opposite of early?", "late"), ("What is the plural of mouse?", "mice"),
    ("What is the plural of child?", "children"), ("What is the past tense of go?", "went"),
    ("What shape has three sides?", "triangle"), ("What shape has eight sides?", "octagon"),
    ("What do we call a word that means the same as another word?", "synonym"),
    ("What instrument has black and white keys?", "piano"), ("What is the boiling point of water in degrees "
                                                              "Celsius at sea level?", "100"),
    ("What metal is liquid at room temperature?", "mercury"), ("What organ pumps blood around the body?", "heart"),
]
COUNT_FACTS = [  # (question, number)
    ("How many legs does a spider have?", 8), ("How many legs does an insect have?", 6),
    ("How many days are in a leap year?", 366), ("How many days are in a normal year?", 365),
    ("How many continents are there?", 7), ("How many sides does a hexagon have?", 6),
    ("How many minutes are in an hour?", 60), ("How many hours are in a day?", 24),
    ("How many months are in a year?", 12), ("How many planets are in the solar system?", 8),
    ("How many letters are in the English alphabet?", 26), ("How many players are on a football (soccer) team "
                                                            "on the field?", 11),
    ("How many strings does a standard guitar have?", 6), ("How many years are in a century?", 100),
    ("How many degrees are in a right angle?", 90), ("How many centimetres are in a metre?", 100),
]
MC = [  # (question, choices, index of the right one)
    ("Which of these is a mammal?", ["shark", "dolphin", "trout", "octopus"], 1),
    ("Which of these is a primary colour?", ["green", "purple", "red", "orange"], 2),
    ("Which of these is the largest?", ["a mouse", "a cat", "a horse", "an elephant"], 3),
    ("Which of these is a fruit?", ["carrot", "apple", "potato", "onion"], 1),
    ("Which planet do we live on?", ["Mars", "Venus", "Earth", "Jupiter"], 2),
    ("Which of these is a prime number?", ["4", "9", "15", "7"], 3),
    ("Which of these is an even number?", ["3", "8", "11", "15"], 1),
    ("What is the freezing point of water in degrees Celsius?", ["0", "10", "32", "100"], 0),
    ("Which of these animals can fly?", ["penguin", "ostrich", "eagle", "kiwi"], 2),
    ("Which of these is a vegetable?", ["banana", "broccoli", "grape", "cherry"], 1),
    ("Which of these is a musical instrument?", ["violin", "hammer", "spoon", "pillow"], 0),
    ("Which of these is the capital of England?", ["Manchester", "London", "Liverpool", "Leeds"], 1),
    ("Which of these is a liquid at room temperature?", ["iron", "salt", "water", "wood"], 2),
    ("How many wheels does a bicycle have?", ["1", "2", "3", "4"], 1),
    ("Which season comes after winter?", ["autumn", "summer", "spring", "winter"], 2),
    ("Which of these is used to write?", ["pen", "fork", "cup", "shoe"], 0),
    ("Which of these is the hottest?", ["ice", "snow", "the Sun", "rain"], 2),
    ("Which of these is a bird?", ["bat", "sparrow", "bee", "frog"], 1),
    ("Which of these is a continent?", ["Asia", "Paris", "Nile", "Everest"], 0),
    ("Which of these is a river?", ["Sahara", "Alps", "Amazon", "Gobi"], 2),
    ("Which of these is a day of the week?", ["March", "Tuesday", "Summer", "Noon"], 1),
    ("Which of these is a month?", ["Friday", "Morning", "July", "Winter"], 2),
    ("Which of these is a reptile?", ["snake", "whale", "robin", "salmon"], 0),
    ("Which gas do humans need to breathe?", ["helium", "oxygen", "neon", "argon"], 1),
    ("Which of these is the smallest?", ["an ant", "a dog", "a cow", "a bus"], 0),
    ("Which shape is round?", ["square", "triangle", "circle", "rectangle"], 2),
    ("Which of these is a sport?", ["tennis", "chair", "table", "window"], 0),
    ("Which of these is a colour?", ["seven", "yellow", "quickly", "under"], 1),
    ("What do bees make?", ["milk", "silk", "honey", "wool"], 2),
    ("Which of these is a number greater than 10?", ["3", "7", "9", "12"], 3),
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


def _arith(rng: random.Random, n: int) -> list[dict]:
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            q, ans = f"What is {a} + {b}?", a + b
        elif kind == 1:
            a, b = rng.randint(20, 199), rng.randint(1, 99)
            a, b = max(a, b), min(a, b)
            q, ans = f"What is {a} - {b}?", a - b
        elif kind == 2:
            a, b = rng.randint(2, 19), rng.randint(2, 12)
            q, ans = f"What is {a} * {b}?", a * b
        else:
            b, ans = rng.randint(2, 12), rng.randint(2, 12)
            q = f"What is {b * ans} divided by {b}?"
        out.append({"id": f"arith-{i + 1:03d}", "prompt": f"{q} {NUM_ONLY}", "reference": str(ans),
                    "kind": "arithmetic"})
    return out


def _units(rng: random.Random, n: int) -> list[dict]:
    out = []
    for i in range(n):
        src, dst, f = CONVERSIONS[i % len(CONVERSIONS)]
        x = rng.randint(2, 9)
        out.append({"id": f"unit-{i + 1:03d}", "prompt": f"How many {dst} are in {x} {src}? {NUM_ONLY}",
                    "reference": str(x * f), "kind": "units"})
    return out


def _dates(rng: random.Random, n: int) -> list[dict]:
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            d, k = rng.randrange(7), rng.randint(1, 3)
            q, ref = f"What day of the week comes {k} day{'s' if k > 1 else ''} after {WEEKDAYS[d]}? {WORD_ONLY}", \
                WEEKDAYS[(d + k) % 7]
        elif kind == 1:
            m = rng.randrange(12)
            q, ref = f"Which month comes right after {MONTHS[m]}? {WORD_ONLY}", MONTHS[(m + 1) % 12]
        elif kind == 2:
            m = rng.randrange(12)
            days = (dt.date(2025 + (m == 11), (m + 2) if m < 11 else 1, 1) - dt.date(2025, m + 1, 1)).days
            q, ref = f"How many days are in {MONTHS[m]} 2025? {NUM_ONLY}", str(days)
        else:
            start = dt.date(2025, 1, 1) + dt.timedelta(days=rng.randrange(330))
            k = rng.randint(2, 20)
            end = start + dt.timedelta(days=k)
            q = (f"If today is {MONTHS[start.month - 1]} {start.day}, 2025, what is the date {k} days later? "
                 "Answer with the month and day, like March 5.")
            ref = f"{MONTHS[end.month - 1]} {end.day}"
        out.append({"id": f"date-{i + 1:03d}", "prompt": q, "reference": ref, "kind": "dates",
                    **({"grader": "contains"} if kind == 3 else {})})
    return out


def _facts() -> list[dict]:
    out = [{"id": f"fact-{i + 1:03d}", "prompt": f"{q} {WORD_ONLY}", "reference": r, "kind": "facts"}
           for i, (q, r) in enumerate(FACTS)]
    out += [{"id": f"count-{i + 1:03d}", "prompt": f"{q} {NUM_ONLY}", "reference": str(r), "kind": "facts"}
            for i, (q, r) in enumerate(COUNT_FACTS)]
    return out


def _mc(rng: random.Random) -> list[dict]:
    out = []
    for i, (q, choices, right) in enumerate(MC):
        # two versions of each question with the options in different orders: the letter is not a giveaway
        for v in range(2):
            order = list(range(len(choices)))
            rng.shuffle(order)
            shuffled = [choices[j] for j in order]
            out.append({"id": f"mc-{i + 1:03d}{'ab'[v]}", "prompt": f"{q} {LETTER_ONLY}", "choices": shuffled,
                        "reference": "ABCD"[order.index(right)], "kind": "multiple-choice"})
    return out


def make() -> str:
    rng = random.Random(SEED)
    rows = _arith(rng, 80) + _units(rng, 56) + _dates(rng, 48) + _facts() + _mc(rng)
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the committed file differs")
    text = make()
    if ap.parse_args().check:
        if not OUT.is_file() or OUT.read_text(encoding="utf-8") != text:
            sys.exit(f"{OUT} is stale: run python scripts/make_calibration_prompts.py")
        print(f"{OUT}: up to date ({text.count(chr(10))} prompts)")
        return
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({text.count(chr(10))} prompts)")


if __name__ == "__main__":
    main()
