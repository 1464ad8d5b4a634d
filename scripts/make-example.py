#!/usr/bin/env python3
"""Writes examples/longalign-mini.jsonl: a small LongAlign-format dataset for gateau's demo
and tests. All text is generated here from the word lists below (written for this project,
same licence as gateau); nothing is copied from elsewhere. Deterministic (fixed seed).

Three kinds of sample, 18 in all (6 each), contexts of 6-9 registry paragraphs, about
0.8k-1.1k SmolLM2 tokens (small enough to score on a 2-core CPU in about 3 minutes):
- deep: the answer is a fact stated once, with at least 5 paragraphs (about 600 tokens) after it
  in the context, out of the 512-token short window;
- tail: the answer is a fact stated in the last paragraph (a short window sees it too);
- free: the answer needs no context (general knowledge or writing).
"""
import json, random, sys

rng = random.Random(20241020)
SYL = ["ar", "bel", "cor", "dun", "el", "fen", "gar", "hol", "isk", "jor", "kel", "lum",
       "mor", "nes", "ost", "pra", "quil", "ros", "sar", "tev", "ul", "vas", "wen", "yr", "zan"]
FIRST = ["Odrin", "Maelis", "Tobren", "Ysolde", "Caddock", "Hesper", "Liorn", "Brannoc",
         "Sefa", "Ilvar", "Quenna", "Dorwin", "Aveline", "Garrick", "Perrin", "Thessaly"]
EXPORTS = ["salted herring", "blue slate", "juniper resin", "woven reed mats", "copper wire",
           "smoked cheese", "lamp oil", "barley malt", "pine tar", "river pearls", "wool felt"]
FESTIVALS = ["the Lantern Walk", "the Night of Bells", "the Reed Crowning", "the Salt Supper",
             "the First Frost Fair", "the Mill Race", "the Kite Morning", "the Long Table"]


def name(parts=2):
    return "".join(rng.choice(SYL) for _ in range(parts)).capitalize()


def person():
    return f"{rng.choice(FIRST)} {name(2)}{rng.choice(['et', 'ow', 'ick', 'an'])}"


def village():
    v = {"name": name(2) + rng.choice(["mere", "wick", "ford", "holt", "by"]),
         "master": person(), "export": rng.choice(EXPORTS), "festival": rng.choice(FESTIVALS),
         "river": "the " + name(2), "year": rng.randrange(1120, 1790),
         "people": rng.randrange(300, 9000), "bridges": rng.randrange(1, 9)}
    v["text"] = (
        f"{v['name']} lies on the bank of {v['river']} and was first recorded in the year "
        f"{v['year']}. About {v['people']} people live there, and the village keeps "
        f"{v['bridges']} bridges in repair at its own cost. Its harbor master is {v['master']}, "
        f"who also keeps the tide book and the register of boats. The main export of "
        f"{v['name']} is {v['export']}, carried downstream on flat barges each spring. Every "
        f"autumn the village holds {v['festival']}, when the square is swept and the old "
        f"songs are sung until late.")
    return v


def document(n):
    return [village() for _ in range(n)]


FREE = [
    ("Write one sentence about the sea.", "The sea is wide and restless, and it never keeps the same colour for long."),
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("Name the three primary colours of paint.", "The three primary colours of paint are red, yellow and blue."),
    ("How many days are there in a leap year?", "A leap year has 366 days."),
    ("Give a short greeting for a letter.", "Dear friend, I hope this letter finds you well."),
    ("What do bees make?", "Bees make honey and wax."),
    ("Translate 'good morning' into French.", "Good morning in French is bonjour."),
    ("What is two plus three?", "Two plus three is five."),
    ("Write a short line about autumn.", "In autumn the leaves turn gold and fall softly to the ground."),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun."),
]


def main(out):
    samples = []
    for i in range(18):
        kind = ["deep", "tail", "free"][i % 3]
        n = rng.randrange(6, 10)
        doc = document(n)
        ctx = "The following pages are taken from the Registry of the Eastmarch Villages.\n\n"
        ctx += "\n\n".join(v["text"] for v in doc)
        if kind == "deep":
            v = doc[rng.randrange(0, n - 5)]
            q = f"Who is the harbor master of {v['name']}?"
            a = f"The harbor master of {v['name']} is {v['master']}."
        elif kind == "tail":
            v = doc[-1]
            q = f"Who is the harbor master of {v['name']}?"
            a = f"The harbor master of {v['name']} is {v['master']}."
        else:
            q, a = FREE[(i // 3) % len(FREE)]
        samples.append({"id": f"{kind}-{i:02d}", "kind": kind, "messages": [
            {"role": "user", "content": f"{ctx}\n\n{q}"},
            {"role": "assistant", "content": a}]})
    with open(out, "w") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "examples/longalign-mini.jsonl")
