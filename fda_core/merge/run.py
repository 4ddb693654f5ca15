"""`run_merge`: validate everything, then stream tensor by tensor into a staged output folder."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fda_core.checkpoints.header import DTYPES
from fda_core.checkpoints.inputs import open_reader
from fda_core.checkpoints.layout import CheckpointLayout, InputLimits
from fda_core.checkpoints.lora import ADAPTER_WEIGHTS
from fda_core.checkpoints.reader import TensorReader, all_finite
from fda_core.checkpoints.writer import BackgroundWriter, ShardedWriter, WrittenShard
from fda_core.config import MergeConfig
from fda_core.errors import ConfigError, MergeCancelled, NonFiniteError
from fda_core.fda.anchors import AnchorStore
from fda_core.fda.runner import AnchorSupplier, FdaRun, merge_blocks
from fda_core.merge.lora_output import ADAPTER_PREFIX, LoraExtraction, is_lora_target, write_adapter_config
from fda_core.merge.norm_check import norm_warning
from fda_core.merge.output import (
    check_output_free,
    copy_side_files,
    copy_tokenizer_files,
    staging_directory,
    write_records,
)
from fda_core.merge.plan import MergePlan, TensorTask, build_plan
from fda_core.merge.progress import CancelCallback, MergeProgress, ProgressCallback
from fda_core.merge.provenance import build_provenance, input_digest, safetensors_metadata
from fda_core.merge.seeding import named_generator
from fda_core.methods.base import TensorInputs

DEFAULT_SHARD_BYTES = 5 * 10**9


@dataclass(frozen=True)
class MergeOptions:
    device: str = "cpu"
    max_shard_bytes: int = DEFAULT_SHARD_BYTES
    overwrite: bool = False
    anchor_cache: Path | None = None  # FDA: reuse anchors across merges (content-addressed)
    anchor_supplier: AnchorSupplier | None = None  # FDA: given inputs instead of constructed anchors (ceilings)
    limits: InputLimits = InputLimits()  # what reading the inputs may cost (the service sets its own)


@dataclass
class MergeResult:
    output_dir: Path
    method: str
    tensors: int
    parameters: int
    shards: list[WrittenShard]
    seconds: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # FDA: per block and task, see fda_core.fda.runner
    warnings: list[str] = field(default_factory=list)  # about the inputs, e.g. mismatched task-vector sizes


def run_merge(
    config: MergeConfig,
    out_dir: Path,
    options: MergeOptions = MergeOptions(),
    on_progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
) -> MergeResult:
    report = on_progress or (lambda progress: None)
    clock = _PhaseClock()
    device = resolve_device(options.device)
    check_output_free(Path(out_dir), options.overwrite)
    report(MergeProgress("validate", 0, 1))
    plan = build_plan(config, options.max_shard_bytes, limits=options.limits)
    clock.lap("validate")
    with staging_directory(Path(out_dir), options.overwrite) as staging:
        _fetch_inputs(plan.inputs, report)
        clock.lap("fetch")
        stop_hashing = threading.Event()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        try:
            hashes = pool.submit(_hash_inputs, plan.inputs, stop_hashing)
            shards, metrics = _merge_tensors(plan, staging, device, hashes, report, should_cancel, options)
            provenance = build_provenance(plan, hashes.result())
        finally:
            stop_hashing.set()  # a failed or cancelled merge does not wait for hashing to finish
            pool.shutdown(wait=False, cancel_futures=True)
        clock.lap("merge")
        if not config.lora_rank:  # an adapter folder has adapter_config.json, not the base's config.json
            copy_side_files(plan.reference, staging, config.dtype, plan.config_updates)
            if plan.tokenizer is not None and plan.tokenizer is not plan.reference:
                copy_tokenizer_files(plan.tokenizer, staging)
        write_records(staging, provenance)
        if config.gguf:
            report(MergeProgress("finalize", 0, 1, message="writing model.gguf"))
            _write_gguf(staging, config.gguf, options.limits)
    clock.lap("finalize")
    parameters = sum(math.prod(t.shape) for shard in plan.shards for t in shard)
    return MergeResult(
        Path(out_dir), config.method, len(plan.tasks), parameters, shards, clock.laps, provenance, metrics,
        list(metrics.get("warnings", [])),
    )  # fmt: skip


def _write_gguf(staging: Path, kind: str, limits: InputLimits) -> None:
    """model.gguf beside the safetensors: read back from the folder this merge just wrote (ours, so outside
    whatever LocalAccess seals the inputs to)."""
    from fda_core.checkpoints.gguf_export import export_gguf
    from fda_core.checkpoints.sources import LocalAccess, local_access

    with local_access(LocalAccess()):
        export_gguf(str(staging), staging / "model.gguf", kind, limits=limits)


def resolve_device(name: str) -> torch.device:
    """cpu, cuda or cuda:N, checked against what this machine has."""
    if name != "cpu" and not re.fullmatch(r"cuda(:\d+)?", name):
        raise ConfigError(f"device '{name}' is not one of cpu, cuda, cuda:N")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device '{name}' requested but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def _fetch_inputs(layouts: list[CheckpointLayout], report: ProgressCallback) -> None:
    files = [(source, name) for layout in layouts for _, source, name in layout.hashed_files()]
    for done, (source, name) in enumerate(files):
        report(MergeProgress("fetch", done, len(files), name))
        source.local_path(name)  # downloads remote files once; local files are already here


def _hash_inputs(layouts: list[CheckpointLayout], stop: threading.Event) -> dict[str, dict[str, str]]:
    return {
        layout.uri: {label: source.sha256(name, stop) for label, source, name in layout.hashed_files()}
        for layout in layouts
    }


def _merge_tensors(
    plan: MergePlan,
    staging: Path,
    device: torch.device,
    hashes: Future,
    report: ProgressCallback,
    should_cancel: CancelCallback | None,
    options: MergeOptions,
) -> tuple[list[WrittenShard], dict[str, Any]]:
    writer = BackgroundWriter(ShardedWriter(staging, plan.shards, safetensors_metadata(build_provenance(plan, None))))
    readers = [open_reader(layout, check_finite=plan.config.check_finite) for layout in plan.inputs]
    metrics: dict[str, Any] = {}
    try:
        warning = None if plan.config.layer_stack else norm_warning(plan, readers)
        if warning is not None:
            metrics["warnings"] = [warning]
            report(MergeProgress("check", 1, 1, message=warning))
        if plan.fda is not None:
            metrics["fda"] = merge_blocks(
                _fda_run(plan, readers, device, hashes, staging, report, should_cancel, options), writer.write
            )
        in_blocks = {name for block in plan.blocks for name in block.tensor_names()}
        rest = [task for task in plan.tasks if task.name not in in_blocks]
        extraction = LoraExtraction(plan.config.lora_rank) if plan.config.lora_rank else None
        for done, task in enumerate(rest):
            if should_cancel is not None and should_cancel():
                raise MergeCancelled(f"merge cancelled after {done} of {len(rest)} tensors")
            report(MergeProgress("merge", done, len(rest), task.name))
            merged = merge_tensor(plan, task, readers, device)
            if extraction is None:
                writer.write(task.name, merged)
            else:
                _write_lora(task, merged, readers[0], extraction, writer)
        report(MergeProgress("merge", len(rest), len(rest)))
        shards = writer.finish(safetensors_metadata(build_provenance(plan, hashes.result())))
        if extraction is not None:
            shards = _as_adapter(plan, staging, shards, extraction)
            metrics["warnings"] = metrics.get("warnings", []) + extraction.warnings()
        return shards, metrics
    finally:
        writer.abort()
        for reader in readers:
            reader.close()


def _write_lora(
    task: TensorTask, merged: torch.Tensor, base: TensorReader, extraction: LoraExtraction, writer: BackgroundWriter
) -> None:
    """The merged tensor as LoRA factors (2-D weights), or counted as dropped."""
    if not task.merged:
        return
    if not is_lora_target(task):
        extraction.skip(merged, base.read(task.name))
        return
    a, b = extraction.factors(task, merged, base.read(task.name))
    dtype = DTYPES[task.output.dtype][0]
    module = ADAPTER_PREFIX + task.name.removesuffix(".weight")
    writer.write(f"{module}.lora_A.weight", a.to(dtype).contiguous())
    writer.write(f"{module}.lora_B.weight", b.to(dtype).contiguous())


def _as_adapter(
    plan: MergePlan, staging: Path, shards: list[WrittenShard], extraction: LoraExtraction
) -> list[WrittenShard]:
    os.replace(staging / shards[0].file, staging / ADAPTER_WEIGHTS)
    write_adapter_config(plan, staging, extraction)
    return [WrittenShard(ADAPTER_WEIGHTS, shards[0].tensors, shards[0].bytes)]


def _fda_run(
    plan: MergePlan,
    readers: list[TensorReader],
    device: torch.device,
    hashes: Future,
    staging: Path,
    report: ProgressCallback,
    should_cancel: CancelCallback | None,
    options: MergeOptions,
) -> FdaRun:
    files = hashes.result()  # anchors are keyed and seeded by content: FDA waits for the hashes
    digests = [input_digest(files[layout.uri]) for layout in plan.inputs]
    store = AnchorStore(options.anchor_cache) if options.anchor_cache else None

    def cast(task: TensorTask, tensor: torch.Tensor) -> torch.Tensor:
        return cast_output(task.name, tensor, DTYPES[task.output.dtype][0], check_finite=plan.config.check_finite)

    config_digest = hashlib.sha256(json.dumps(plan.reference.config, sort_keys=True).encode()).hexdigest()
    return FdaRun(
        plan, readers, device, digests, store, staging / "anchors", report, should_cancel, cast, config_digest,
        supplier=options.anchor_supplier,
    )  # fmt: skip


def merge_tensor(plan: MergePlan, task: TensorTask, readers: list[TensorReader], device: torch.device) -> torch.Tensor:
    """Read one tensor from every input, merge it in fp32 (fp64 for fp64 inputs), cast to the output dtype."""
    if task.reads:  # a stacked layer: named tensors of named inputs, no base
        raw = [readers[index].read(name) for index, name in task.reads]
        if not task.merged:
            return raw[0]
    elif not task.merged:
        return readers[0].read(task.name)
    else:
        raw = [reader.read(task.name) for reader in readers]
    compute = torch.float64 if any(t.dtype == torch.float64 for t in raw) else torch.float32
    tensors = [t.to(device=device, dtype=compute) for t in raw]
    del raw
    base = tensors[0] if plan.base and not task.reads else None
    experts = tensors[1:] if plan.base and not task.reads else tensors
    assert task.params is not None and task.method is not None
    inputs = TensorInputs(
        task.name, base, experts, task.params, list(task.model_params), _generator(plan, task, device)
    )
    merged = task.method.merge(inputs)
    return cast_output(task.name, merged, DTYPES[task.output.dtype][0], check_finite=plan.config.check_finite)


def cast_output(name: str, merged: torch.Tensor, dtype: torch.dtype, check_finite: bool = False) -> torch.Tensor:
    """Cast to the output dtype, refusing values the dtype cannot hold (bf16 → fp16 overflow) and, with
    `check_finite`, a merge that produced NaN or ±inf."""
    if check_finite and merged.is_floating_point() and not all_finite(merged):
        raise NonFiniteError(
            f"tensor '{name}': the merge produced NaN or infinite values; check the method's parameters "
            "(or set check_finite: false)"
        )
    out = merged.to(dtype=dtype)
    if (
        dtype.itemsize < merged.dtype.itemsize
        and not bool(torch.isfinite(out).all())
        and bool(torch.isfinite(merged).all())
    ):
        peak = float(merged.abs().max())
        raise ConfigError(
            f"tensor '{name}': merged values up to {peak:.3g} overflow {str(dtype).removeprefix('torch.')}; choose another dtype"
        )
    return out.cpu()


def _generator(plan: MergePlan, task: TensorTask, device: torch.device) -> torch.Generator | None:
    """One generator per (seed, tensor): results do not depend on tensor order or device count."""
    assert task.method is not None
    return named_generator(plan.config.seed, task.name, device) if task.method.uses_randomness else None


class _PhaseClock:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.laps[phase] = round(now - self._last, 3)
        self._last = now
