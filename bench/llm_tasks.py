"""The four decoder domains of bench/quality_llm.py, from packages only (shared eval notes).

- python: source of the interpreter's own standard library (/usr/lib/python3.11/*.py), split by file;
- german: German fortunes (Debian `fortunes-de`, /usr/share/games/fortunes/de/), split by item;
- arithmetic: generated "Q: a + b = ?" / "A: c" pairs (answers checked exactly);
- wordnet: a WordNet noun gloss → the word it defines (Debian `wordnet-base`), answers checked exactly.

Each domain gives texts for training, validation and test, and (the last two) question/answer pairs
for exact match. Splits are disjoint and depend only on the seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

STDLIB = Path("/usr/lib/python3.11")
GERMAN_FORTUNES = Path("/usr/share/games/fortunes/de")
WORDNET_NOUNS = Path("/usr/share/wordnet/data.noun")
PACKAGES = {"fortunes-de": GERMAN_FORTUNES, "wordnet-base": WORDNET_NOUNS}  # Debian package: what it installs
DOMAINS = ("python", "german", "arithmetic", "wordnet")


@dataclass(frozen=True)
class QA:
    """One exact-match item: the model sees `prompt` and must answer `answer` (then a newline)."""

    prompt: str
    answer: str

    @property
    def text(self) -> str:
        return f"{self.prompt} {self.answer}\n"


@dataclass(frozen=True)
class Domain:
    name: str
    train: list[str]
    val: list[str]
    test: list[str]
    qa_test: list[QA]  # empty where answers are not short


def _three_way(items: list, seed: int, val: int, test: int) -> tuple[list, list, list]:
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    return shuffled[val + test :], shuffled[:val], shuffled[val : val + test]


def python_source(seed: int) -> Domain:
    files = sorted(p for p in STDLIB.glob("*.py") if p.stat().st_size > 2000)
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    train, val, test = _three_way(texts, seed, val=15, test=40)
    return Domain("python", train, val, test, [])


def german_fortunes(seed: int) -> Domain:
    items: list[str] = []
    for path in sorted(GERMAN_FORTUNES.iterdir()):
        if path.is_file() and not path.name.endswith((".dat", ".u8")):
            raw = path.read_bytes().decode("utf-8", errors="replace")
            items += [item.strip() for item in raw.split("\n%\n") if 80 <= len(item.strip()) <= 1200]
    train, val, test = _three_way(items, seed, val=150, test=400)
    return Domain("german", train, val, test, [])


def _sum(rng: random.Random) -> QA:
    a, b = rng.randint(10, 999), rng.randint(10, 999)
    return QA(f"Q: {a} + {b} = ?\nA:", str(a + b))


def arithmetic(seed: int) -> Domain:
    rng = random.Random(1000 + seed)
    items = list({qa.prompt: qa for qa in (_sum(rng) for _ in range(12000))}.values())
    train, val, test = _three_way(items, seed, val=300, test=800)
    return Domain("arithmetic", [q.text for q in train], [q.text for q in val], [q.text for q in test], test[:200])


def _gloss_items() -> list[QA]:
    items = []
    for line in WORDNET_NOUNS.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("  "):
            continue
        head, _, gloss = line.partition(" | ")
        word = head.split()[4].replace("_", " ").lower()
        definition = gloss.split(";")[0].strip()
        if word.isalpha() and 3 <= len(word) <= 12 and 20 <= len(definition) <= 160:
            items.append(QA(f"Definition: {definition}\nWord:", word))
    return items


def wordnet_glosses(seed: int) -> Domain:
    train, val, test = _three_way(_gloss_items(), seed, val=300, test=800)
    return Domain("wordnet", [q.text for q in train], [q.text for q in val], [q.text for q in test], test[:200])


def domains(seed: int) -> list[Domain]:
    missing = [package for package, path in PACKAGES.items() if not path.exists()]
    if missing:
        raise SystemExit(f"the benchmark's data: apt-get install {' '.join(missing)}")
    return [python_source(seed), german_fortunes(seed), arithmetic(seed), wordnet_glosses(seed)]
