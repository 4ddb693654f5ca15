"""TEXT-3's data, from packages only (shared eval notes): VADER movie-review sentiment (2 classes),
WordNet noun categories (12), fortune-cookie topics (10). Used by the MiniLM quality benchmark.

Sources: the vaderSentiment 3.3.2 sdist (`pip download --no-deps --no-binary :all:` into
bench/.cache — a package-registry fetch, like an install), Debian `wordnet-base`, `fortunes`,
`fortunes-min` (apt-get install them first).
"""

from __future__ import annotations

import random
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache" / "text_tasks"
WORDNET_NOUNS = Path("/usr/share/wordnet/data.noun")
FORTUNES = Path("/usr/share/games/fortunes")
WORDNET_CATEGORIES = {  # lexicographer file numbers of the 12 noun categories
    5: "animal", 20: "plant", 13: "food", 18: "person", 6: "artifact", 15: "location",
    4: "act", 26: "state", 7: "attribute", 10: "communication", 9: "cognition", 27: "substance",
}  # fmt: skip
FORTUNE_TOPICS = (
    "computers",
    "politics",
    "science",
    "law",
    "education",
    "food",
    "drugs",
    "literature",
    "work",
    "men-women",
)


@dataclass
class TextTask:
    name: str
    texts: list[str]
    labels: list[int]
    classes: list[str]

    def split(self, train: int, test: int, seed: int) -> tuple[TextTask, TextTask, TextTask]:
        """Shuffled train / validation (= test size) / test subsets."""
        order = list(range(len(self.texts)))
        random.Random(seed).shuffle(order)
        parts = (order[:train], order[train : train + test], order[train + test : train + 2 * test])
        return tuple(
            TextTask(self.name, [self.texts[i] for i in p], [self.labels[i] for i in p], self.classes) for p in parts
        )  # type: ignore[return-value]


def vader_movie_reviews() -> TextTask:
    """Binary sentiment: mean human score > 0; |score| < 0.5 dropped."""
    archive = _vader_archive()
    with tarfile.open(archive) as outer:
        member = next(m for m in outer.getmembers() if m.name.endswith("movieReviewSnippets_GroundTruth.txt"))
        lines = outer.extractfile(member).read().decode("latin-1").splitlines()  # type: ignore[union-attr]
    texts, labels = [], []
    for line in lines:
        parts = line.split("\t")
        if len(parts) >= 3 and abs(float(parts[1])) >= 0.5:
            texts.append(parts[2].strip())
            labels.append(int(float(parts[1]) > 0))
    return TextTask("sentiment", texts, labels, ["negative", "positive"])


def _vader_archive() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = next(CACHE.glob("vaderSentiment-3.3.2.tar.gz"), None)
    if sdist is None:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "vaderSentiment==3.3.2",
            "-d",
            str(CACHE),
        ]
        subprocess.run(command, check=True, capture_output=True)
        sdist = CACHE / "vaderSentiment-3.3.2.tar.gz"
    inner = CACHE / "hutto_ICWSM_2014.tar.gz"
    if not inner.exists():
        with tarfile.open(sdist) as archive:
            member = next(
                m for m in archive.getmembers() if m.name.endswith("additional_resources/hutto_ICWSM_2014.tar.gz")
            )
            inner.write_bytes(archive.extractfile(member).read())  # type: ignore[union-attr]
    return inner


def wordnet_nouns() -> TextTask:
    """A noun gloss → its lexicographer category (12 of WordNet's 26)."""
    classes = list(WORDNET_CATEGORIES.values())
    texts, labels = [], []
    for line in WORDNET_NOUNS.read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):
            continue
        head, _, gloss = line.partition(" | ")
        category = int(head.split()[1])
        if category in WORDNET_CATEGORIES and gloss.strip():
            texts.append(gloss.strip())
            labels.append(classes.index(WORDNET_CATEGORIES[category]))
    return TextTask("wordnet", texts, labels, classes)


def fortune_topics() -> TextTask:
    texts, labels = [], []
    for index, topic in enumerate(FORTUNE_TOPICS):
        items = (FORTUNES / topic).read_text(encoding="latin-1").split("\n%\n")
        for item in items:
            if item.strip():
                texts.append(" ".join(item.split()))
                labels.append(index)
    return TextTask("fortunes", texts, labels, list(FORTUNE_TOPICS))


def text3() -> list[TextTask]:
    return [vader_movie_reviews(), wordnet_nouns(), fortune_topics()]


if __name__ == "__main__":
    for task in text3():
        counts = {c: task.labels.count(i) for i, c in enumerate(task.classes)}
        print(f"{task.name}: {len(task.texts)} examples, {counts}; e.g. {task.texts[0][:70]!r}")
