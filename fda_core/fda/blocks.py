"""Find a model's repeated blocks and run one with any weights via torch.func.functional_call.

A block skeleton comes from a one-layer copy of the model built from its config (random weights,
never used: every parameter is supplied by the caller), so memory is one layer whatever the
model's depth. The block's call arguments (causal masks, rotary position embeddings, position
ids) are captured once with a forward pre-hook while the one-layer model runs on a dummy input
of the anchor shape, and replayed for every call; batch-1 tensors broadcast over the anchors.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn
from torch.func import functional_call

from fda_core.errors import ConfigError
from fda_core.fda.objective import Params

LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")
MAX_DUMMY_PIXELS = 1 << 26  # channels × height × width of the one-image dummy input


@dataclass
class Block:
    """One block of a model, addressed by checkpoint tensor names; blocks of a stack share a skeleton."""

    prefix: str  # checkpoint tensor-name prefix, e.g. "model.layers.3."
    module: nn.Module  # used as a skeleton only: every parameter comes from the caller
    anchor_shape: tuple[int, ...]  # one anchor: (T, d), or (d,) for FFN-only / MLP blocks
    call_args: tuple[Any, ...] = ()
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    renames: dict[str, str] = field(default_factory=dict)  # module name → checkpoint name, where they differ

    @property
    def parameter_names(self) -> list[str]:
        """Block-relative module names, e.g. "self_attn.q_proj.weight"."""
        return [name for name, _ in self.module.named_parameters()]

    def to(self, device: torch.device) -> Block:
        """Move the skeleton's buffers and the captured call arguments (rotary cos/sin, masks, ids)."""
        self.module.to(device)
        self.call_args = _moved(self.call_args, device)
        self.call_kwargs = _moved(self.call_kwargs, device)
        return self

    def checkpoint_name(self, parameter: str) -> str:
        """The checkpoint tensor holding `parameter` (transformers may save legacy names)."""
        return self.prefix + self.renames.get(parameter, parameter)

    def tensor_names(self) -> list[str]:
        return [self.checkpoint_name(name) for name in self.parameter_names]

    def outputs(self, params: Params, inputs: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """Block outputs without a graph, `batch` inputs at a time (bounded memory for many inputs)."""
        with torch.no_grad():
            return torch.cat([self(params, inputs[s : s + batch]) for s in range(0, len(inputs), batch)])

    def __call__(self, params: Params, anchors: torch.Tensor) -> torch.Tensor:
        """Block output for anchors (b, *anchor_shape) with the given block-relative params."""
        out = functional_call(self.module, params, (anchors, *self.call_args), self.call_kwargs)
        return out[0] if isinstance(out, tuple) else out


def _moved(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple | list):
        return type(value)(_moved(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _moved(v, device) for k, v in value.items()}
    return value


def layer_count(config: dict[str, Any]) -> int:
    for key in LAYER_COUNT_KEYS:
        if isinstance(config.get(key), int):
            return int(config[key])
    raise ConfigError("config.json gives no layer count (num_hidden_layers / n_layer); pass parameters.blocks")


def discover_blocks(
    config: dict[str, Any], tensor_names: list[str], *, tokens: int, blocks: str | None = None, ffn_only: bool = False
) -> list[Block]:
    """Blocks of the Hugging Face model described by `config` whose checkpoint has `tensor_names`."""
    if config.get("model_type") == "fda_mlp":
        from fda_core.fda.mlp import mlp_blocks

        return mlp_blocks(config, tensor_names)
    kinds = set(config.get("layer_types") or [])
    if len(kinds) > 1 and not ffn_only:
        raise ConfigError(
            f"layers of different kinds ({', '.join(sorted(map(str, kinds)))}) take different call arguments; "
            "use ffn_only: true or pass parameters.blocks"
        )
    skeleton = _one_layer_model(config)
    path = _resolve_block_path(skeleton, blocks) if blocks else _find_block_list(skeleton, config)
    block_list = cast(nn.ModuleList, skeleton.get_submodule(path))
    args, kwargs, width = _capture_call(skeleton, block_list[0], config, tokens)
    module: nn.Module = block_list[0]
    saved_path, renames = _saved_names(skeleton, path)
    prefixes = _checkpoint_prefixes(saved_path, tensor_names, layer_count(config))
    if ffn_only:
        module, prefixes, renames = _ffn_of(module, prefixes, renames, path)
        return [Block(prefix, module.eval(), (width,), renames=renames) for prefix in prefixes]
    shape = (int(args[0].shape[1]), width)
    return [Block(prefix, module.eval(), shape, args[1:], kwargs, renames) for prefix in prefixes]


def check_blocks(
    config: dict[str, Any],
    shapes: dict[str, tuple[int, ...]],
    *,
    tokens: int,
    blocks: str | None = None,
    ffn_only: bool = False,
) -> list[Block]:
    """The blocks discover_blocks would find, built on the meta device: no memory, no forward pass.

    Every size comes from config.json, so this first checks, with integers, that the config describes
    the checkpoint whose tensor `shapes` are given: its layer count, the shape of every parameter the
    checkpoint stores, a one-layer skeleton no larger than the checkpoint, and dummy inputs of a sane
    size. Only then is anything real worth building (discover_blocks). The blocks returned have no
    captured call arguments: they name tensors and shapes, they cannot run."""
    count = layer_count(config) if config.get("model_type") != "fda_mlp" else len(config.get("layer_sizes") or [])
    if count > len(shapes):
        raise ConfigError(f"config.json describes {count} layers but the checkpoint holds {len(shapes)} tensors")
    if config.get("model_type") == "fda_mlp":
        from fda_core.fda.mlp import mlp_blocks

        _check_mlp_sizes(config, shapes)
        with torch.device("meta"):
            return mlp_blocks(config, list(shapes))
    _check_dummy_inputs(config, tokens)
    with torch.device("meta"):
        skeleton = _one_layer_model(config)
        path = _resolve_block_path(skeleton, blocks) if blocks else _find_block_list(skeleton, config)
        module: nn.Module = cast(nn.ModuleList, skeleton.get_submodule(path))[0]
        saved_path, renames = _saved_names(skeleton, path)
        prefixes = _checkpoint_prefixes(saved_path, list(shapes), count)
        _check_skeleton(skeleton, shapes, prefixes[0].removesuffix(f"{saved_path}.0."))
        if not any(name.startswith(prefixes[-1]) for name in shapes):
            raise ConfigError(
                f"config.json describes {count} layers but the checkpoint has no '{prefixes[-1]}…' tensors"
            )
        width = next(
            (int(config[k]) for k in ("hidden_size", "n_embd", "d_model") if isinstance(config.get(k), int)), 0
        )
        if ffn_only:
            module, prefixes, renames = _ffn_of(module, prefixes, renames, path)
            return [Block(prefix, module, (width,), renames=renames) for prefix in prefixes]
        return [Block(prefix, module, (tokens, width), renames=renames) for prefix in prefixes]


def _check_mlp_sizes(config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
    sizes = config.get("layer_sizes")
    if not isinstance(sizes, list) or not all(type(size) is int and size > 0 for size in sizes):
        raise ConfigError("fda_mlp config needs layer_sizes: a list of positive integers")
    for index, (width_in, width_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        stored = shapes.get(f"layers.{index}.weight")
        if stored is not None and stored != (width_out, width_in):
            raise ConfigError(
                f"fda_mlp layer_sizes say layers.{index}.weight is {[width_out, width_in]}, the checkpoint's is {list(stored)}"
            )


def _check_dummy_inputs(config: dict[str, Any], tokens: int) -> None:
    """The one-layer model runs once on a dummy input of the anchor shape: it must be a small one."""
    if "image_size" in config and "num_channels" in config:
        size, channels = config["image_size"], config["num_channels"]
        if not (type(size) is int and type(channels) is int and 0 < channels * size * size <= MAX_DUMMY_PIXELS):
            raise ConfigError(f"config.json image_size {size!r} × num_channels {channels!r} is not a usable image size")
        return
    positions = next((config[k] for k in POSITION_KEYS if type(config.get(k)) is int), None)
    if positions is not None and tokens > positions:
        raise ConfigError(f"tokens: {tokens} per anchor, but the model takes at most {positions} positions")


def _check_skeleton(skeleton: nn.Module, shapes: dict[str, tuple[int, ...]], wrapper: str) -> None:
    """Each skeleton parameter the checkpoint stores (under `wrapper`, e.g. "model.") has the
    checkpoint's shape, and the one-layer skeleton is no larger than the whole checkpoint:
    config.json cannot make us build more than is there."""
    stored = sum(math.prod(shape) for shape in shapes.values())
    built = sum(p.numel() for p in skeleton.parameters()) + sum(b.numel() for b in skeleton.buffers())
    if built > max(stored, 1 << 20):
        raise ConfigError(
            f"config.json describes a layer of {built:,} values, more than the checkpoint's {stored:,}; "
            "it does not describe this checkpoint"
        )
    saved = _saved_parameter_names(skeleton)
    for name, parameter in skeleton.named_parameters():
        key = wrapper + saved.get(name, name)
        if key in shapes and tuple(parameter.shape) != shapes[key]:
            raise ConfigError(
                f"config.json gives '{key}' the shape {list(parameter.shape)}, the checkpoint stores"
                f" {list(shapes[key])}; it does not describe this checkpoint"
            )


def first_block_inputs(
    config: dict[str, Any],
    tensor_names: list[str],
    read: Callable[[str], torch.Tensor],
    inputs: torch.Tensor,
    *,
    blocks: str | None = None,
    batch: int = 64,
) -> torch.Tensor:
    """The base model's input to its first block for model inputs (m, …) — token ids (m, T), pixel
    values (m, C, H, W), or features (m, d) for fda_mlp — as (m, *one anchor). `read` gives a base
    tensor by checkpoint name; only the tensors before the blocks (embeddings) take part."""
    if config.get("model_type") == "fda_mlp":
        return inputs.float()
    skeleton = _one_layer_model(config)
    path = _resolve_block_path(skeleton, blocks) if blocks else _find_block_list(skeleton, config)
    first = cast(nn.ModuleList, skeleton.get_submodule(path))[0]
    weights = _weights_before_blocks(skeleton, path, tensor_names, read, layer_count(config))
    outputs = []
    for start in range(0, len(inputs), batch):
        part = inputs[start : start + batch]
        key = "pixel_values" if part.is_floating_point() else "input_ids"
        outputs.append(
            _captured_input(skeleton, first, weights, {key: part.float() if key == "pixel_values" else part})
        )
    return torch.cat(outputs)


def _weights_before_blocks(
    skeleton: nn.Module, path: str, tensor_names: list[str], read: Callable[[str], torch.Tensor], count: int
) -> Params:
    """{skeleton parameter: the base's tensor} for every parameter outside the blocks the checkpoint has."""
    saved_path, _ = _saved_names(skeleton, path)
    wrapper = _checkpoint_prefixes(saved_path, tensor_names, count)[0].removesuffix(f"{saved_path}.0.")
    saved = _saved_parameter_names(skeleton)
    present = set(tensor_names)
    return {
        name: read(wrapper + saved[name]).float()
        for name, _ in skeleton.named_parameters()
        if not name.startswith(f"{path}.") and wrapper + saved.get(name, name) in present
    }


def _saved_parameter_names(skeleton: nn.Module) -> dict[str, str]:
    """{module parameter name: the name save_pretrained gives it} (transformers 5 legacy names)."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:
        return {name: name for name, _ in skeleton.named_parameters()}
    ours = {id(p): name for name, p in skeleton.named_parameters()}
    saved = revert_weight_conversion(skeleton, dict(skeleton.state_dict(keep_vars=True)))  # type: ignore[arg-type]
    return {ours[id(t)]: name for name, t in saved.items() if id(t) in ours}


def _captured_input(skeleton: nn.Module, first: nn.Module, weights: Params, kwargs: dict[str, Any]) -> torch.Tensor:
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, args: tuple, call_kwargs: dict) -> None:
        captured["hidden"] = args[0] if args else call_kwargs["hidden_states"]
        raise _Captured

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            functional_call(skeleton, weights, (), kwargs, strict=False)
    except _Captured:
        pass
    finally:
        handle.remove()
    return captured["hidden"].detach()


def _one_layer_model(config: dict[str, Any]) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    values = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "auto_map")}
    model_type = config.get("model_type")
    if not model_type:
        raise ConfigError("config.json has no model_type; pass parameters.blocks for a custom model")
    if not isinstance(model_type, str):
        raise ConfigError(f"config.json model_type {model_type!r} is not a string")
    try:
        hf_config = AutoConfig.for_model(model_type, **values)
    except ValueError as exc:
        raise ConfigError(
            f"model_type '{model_type}' is unknown to transformers ({_first_line(exc)}); pass parameters.blocks"
        ) from None
    except Exception as exc:  # transformers' own checks of the values: TypeError, ZeroDivisionError, …
        raise ConfigError(f"config.json: transformers refuses it ({type(exc).__name__}: {_first_line(exc)})") from None
    for key in LAYER_COUNT_KEYS:
        if isinstance(getattr(hf_config, key, None), int):
            setattr(hf_config, key, 1)
    hf_config.use_cache = False
    with torch.random.fork_rng(devices=[]):  # the skeleton's random init must not move the caller's RNG
        torch.manual_seed(0)
        try:
            model = AutoModel.from_config(hf_config, attn_implementation="sdpa", trust_remote_code=False)
        except Exception as exc:  # a config transformers accepts but cannot build (a head count of 0, …)
            raise ConfigError(
                f"config.json: transformers cannot build model_type '{model_type}' from it "
                f"({type(exc).__name__}: {_first_line(exc)})"
            ) from None
        return model.float().eval()


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:199] + "…"


def _resolve_block_path(skeleton: nn.Module, given: str) -> str:
    """Accept the module path ("layers") or the checkpoint's ("model.layers")."""
    parts = given.strip(".").split(".")
    for start in range(len(parts)):
        path = ".".join(parts[start:])
        try:
            module = skeleton.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return path
    lists = [name for name, m in skeleton.named_modules() if isinstance(m, nn.ModuleList)]
    raise ConfigError(
        f"blocks: '{given}' is not a list of layers in {type(skeleton).__name__}; layer lists: {', '.join(lists)}"
    )


def _find_block_list(skeleton: nn.Module, config: dict[str, Any]) -> str:
    candidates = [
        name for name, module in skeleton.named_modules() if isinstance(module, nn.ModuleList) and len(module) == 1
    ]
    candidates = [name for name in candidates if any(p.numel() for p in skeleton.get_submodule(name).parameters())]
    if len(candidates) != 1:
        found = ", ".join(candidates) or "none"
        raise ConfigError(
            f"cannot tell the repeated blocks of model_type '{config.get('model_type')}' (candidates: {found}); "
            "pass parameters.blocks, e.g. blocks: model.layers"
        )
    return candidates[0]


class _Captured(Exception):
    pass


def _capture_call(
    skeleton: nn.Module, block: nn.Module, config: dict[str, Any], tokens: int
) -> tuple[tuple, dict, int]:
    """Run the one-layer model on a dummy input and keep block 0's call arguments."""
    captured: dict[str, Any] = {}

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured["args"], captured["kwargs"] = args, kwargs
        raise _Captured

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            skeleton(**_dummy_inputs(config, tokens))
    except _Captured:
        pass
    finally:
        handle.remove()
    if "args" not in captured:
        raise ConfigError("the model ran without calling its blocks; pass parameters.blocks")
    hidden = captured["args"][0] if captured["args"] else captured["kwargs"].pop("hidden_states")
    kwargs = {
        k: v for k, v in captured["kwargs"].items() if k not in ("past_key_values", "use_cache", "output_attentions")
    }
    return (hidden, *captured["args"][1:]), kwargs, int(hidden.shape[-1])


def _dummy_inputs(config: dict[str, Any], tokens: int) -> dict[str, torch.Tensor]:
    if "image_size" in config and "num_channels" in config:
        size = config["image_size"]
        return {"pixel_values": torch.zeros(1, config["num_channels"], size, size)}
    return {"input_ids": torch.zeros(1, tokens, dtype=torch.long)}


def _saved_names(skeleton: nn.Module, path: str) -> tuple[str, dict[str, str]]:
    """Where save_pretrained puts block 0's tensors: transformers 5 saves some models under legacy
    names (ViT: `layers.0.attention.k_proj` is saved as `encoder.layer.0.attention.attention.key`).
    Returns the saved block path and {module-relative name: saved-relative name}."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4 saves module names as they are
        return path, {}
    block = cast(nn.ModuleList, skeleton.get_submodule(path))[0]
    ours = {id(p): name for name, p in block.named_parameters()}
    saved = revert_weight_conversion(skeleton, dict(skeleton.state_dict(keep_vars=True)))  # type: ignore[arg-type]
    mapping = {ours[id(t)]: name for name, t in saved.items() if id(t) in ours}
    if len(mapping) != len(ours):
        raise ConfigError(f"blocks at '{path}' are saved in a converted layout (fused or split tensors); not supported")
    block_path = _common_block_path(list(mapping.values()), path)
    renames = {rel: name[len(block_path) + 3 :] for rel, name in mapping.items() if name[len(block_path) + 3 :] != rel}
    return block_path, renames


def _common_block_path(saved_names: list[str], path: str) -> str:
    """'encoder.layer' from names like 'encoder.layer.0.attention.attention.key.weight'."""
    paths = {name.split(".0.", 1)[0] for name in saved_names if ".0." in name}
    if len(paths) != 1:
        raise ConfigError(
            f"cannot map the blocks at '{path}' to checkpoint names ({sorted(paths)}); pass parameters.blocks"
        )
    return paths.pop()


def _checkpoint_prefixes(path: str, tensor_names: list[str], count: int) -> list[str]:
    """'layers' in the model ↔ 'model.layers.0.' in a checkpoint saved from a wrapper (…ForCausalLM)."""
    pattern = re.compile(rf"^(.*?){re.escape(path)}\.0\.")
    for name in tensor_names:
        match = pattern.match(name)
        if match and (match.group(1) == "" or match.group(1).endswith(".")):
            return [f"{match.group(1)}{path}.{layer}." for layer in range(count)]
    raise ConfigError(f"no checkpoint tensor starts with '…{path}.0.'; pass parameters.blocks matching the checkpoint")


def _ffn_of(
    layer: nn.Module, prefixes: list[str], renames: dict[str, str], path: str
) -> tuple[nn.Module, list[str], dict[str, str]]:
    """The layer's feed-forward module; its tensors keep their layer-relative saved names
    (ViT saves `mlp.fc1` as `intermediate.dense`)."""
    for name in ("mlp", "feed_forward", "ffn"):
        sub_module = getattr(layer, name, None)
        if isinstance(sub_module, nn.Module):
            sub = {p: renames.get(f"{name}.{p}", f"{name}.{p}") for p, _ in sub_module.named_parameters()}
            return copy.deepcopy(sub_module), prefixes, sub
    raise ConfigError(f"ffn_only: the blocks at '{path}' have no mlp / feed_forward module")
