"""Read a mergekit 0.1.5 YAML into our schema, keeping mergekit's semantics.

What changes in translation: `merge_method` → `method`; a single `slices` entry whose sources
all cover the same layer range becomes `models` (its own `parameters` rank above the file's, as in
mergekit); the base model listed among `models` is the base, not an expert — except for the methods
mergekit feeds every input alike (linear, karcher, passthrough), which also get an unlisted base
appended, as mergekit's `models:` form does; a `rescale` flag means L1-norm matching; parameter
defaults that differ from ours are written out; `out_dtype` (else `dtype`) is the output dtype.
Several slices with passthrough (one source each) become a `layer_stack`; several slices with
another method, and whatever else we do not implement, fail loudly
instead of merging differently.
"""

from __future__ import annotations

from typing import Any

from fda_core.errors import ConfigError

KNOWN_KEYS = {
    "merge_method",
    "base_model",
    "models",
    "slices",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "chat_template",
    "name",
}
SLICE_KEYS = {"sources", "parameters", "base_model", "residual_weight"}  # residual_weight: unused by mergekit 0.1.5
DROPPED_PARAMETERS = {"int8_mask"}  # a memory optimisation in mergekit; no effect on the result
EVERY_INPUT_ALIKE = {"linear", "karcher", "passthrough"}  # mergekit ignores which input is the base
RESCALED = {"dare_linear": True, "dare_ties": True, "della": True, "della_linear": True, "breadcrumbs_ties": False}
NEVER_RESCALED = {"task_arithmetic", "ties", "breadcrumbs"}  # take mergekit's `rescale` but we have no L1 rescale
MERGEKIT_DEFAULTS = {"breadcrumbs": {"density": 1.0}, "breadcrumbs_ties": {"density": 1.0}}  # ours: 0.9


def from_mergekit(doc: dict[str, Any], where: str = "config") -> dict[str, Any]:
    unknown = sorted(set(doc) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"{where}: mergekit option '{unknown[0]}' is not supported by fda-merge")
    method = doc["merge_method"]
    tokenizer = _tokenizer_source(doc, where)
    if method == "passthrough" and doc.get("slices"):
        return _layer_stack(doc, where) | tokenizer
    the_slice = _single_slice(doc, where)
    base = _slice_base(doc, the_slice, where)
    models = _inputs(doc, the_slice, where)
    if method in EVERY_INPUT_ALIKE:
        if base and not the_slice and not any(_same(m["model"], base) for m in models):
            _check_appended_base(method, doc, where)
            models.append({"model": base, "parameters": {}})
    else:
        models = [m for m in models if not (base and _same(m["model"], base))]
    parameters = _layered(_drop((the_slice or {}).get("parameters") or {}), _drop(doc.get("parameters") or {}))
    return {
        "method": method,
        "base_model": base,
        "models": models,
        "parameters": _parameters(method, parameters, where),
        "dtype": doc.get("out_dtype") or doc.get("dtype"),
        "layers": _slice_end(the_slice),
    } | tokenizer


def _tokenizer_source(doc: dict[str, Any], where: str) -> dict[str, Any]:
    source = doc.get("tokenizer_source")
    if source in (None, "base"):
        return {}
    if not isinstance(source, str):
        raise ConfigError(f"{where}: tokenizer_source must be base, union or a model path, got {source!r}")
    return {"tokenizer_source": source}


def _layer_stack(doc: dict[str, Any], where: str) -> dict[str, Any]:
    """passthrough over several slices, one source each: the frankenmerge, as models + layer_stack."""
    if doc.get("models"):
        raise ConfigError(f"{where}: give either models or slices, not both")
    models, stack = [], []
    for index, the_slice in enumerate(doc["slices"]):
        if not isinstance(the_slice, dict):
            raise ConfigError(f"{where}: a slice is a mapping with sources, got {the_slice!r}")
        unknown = sorted(set(the_slice) - SLICE_KEYS)
        if unknown:
            raise ConfigError(f"{where}: slice option '{unknown[0]}' is not supported by fda-merge")
        sources = the_slice.get("sources") or []
        if len(sources) != 1 or not isinstance(sources[0], dict):
            raise ConfigError(
                f"{where}: slices[{index}] has {len(sources)} sources; passthrough stacks one source per slice"
            )
        source = sources[0]
        layers = source.get("layer_range")
        if not (isinstance(layers, list) and len(layers) == 2 and all(type(i) is int for i in layers)):
            raise ConfigError(
                f"{where}: slices[{index}]: layer_range must be two integers [start, end], got {layers!r}"
            )
        own = _layered(_drop(source.get("parameters") or {}), _drop(the_slice.get("parameters") or {}))
        models.append({"model": _reference(source, where), "parameters": own})
        stack.append({"model": index, "layers": layers})
    return {
        "method": "passthrough",
        "base_model": doc.get("base_model"),
        "models": models,
        "parameters": _drop(doc.get("parameters") or {}),
        "dtype": doc.get("out_dtype") or doc.get("dtype"),
        "layer_stack": stack,
    }


def _check_appended_base(method: str, doc: dict[str, Any], where: str) -> None:
    if method == "linear" and "weight" not in (doc.get("parameters") or {}):
        raise ConfigError(
            f"{where}: mergekit's linear averages base_model in as well but no weight is given for it "
            "(mergekit 0.1.5 refuses this file); list the base under models with a weight"
        )
    if method == "passthrough":
        raise ConfigError(
            f"{where}: passthrough copies one model, but mergekit counts an unlisted base_model as an input too "
            "(mergekit 0.1.5 refuses this file); drop base_model, or make it the one model"
        )


def _single_slice(doc: dict[str, Any], where: str) -> dict[str, Any] | None:
    if doc.get("models") and doc.get("slices"):
        raise ConfigError(f"{where}: give either models or slices, not both")
    slices = doc.get("slices")
    if not slices:
        return None
    if len(slices) != 1:
        raise ConfigError(
            f"{where}: {len(slices)} slices with {doc['merge_method']}: fda-merge stacks slices with passthrough"
            " (one source each); merging several models per slice over different layers is not supported — merge"
            " each slice's models first, then stack the results with passthrough"
        )
    if not isinstance(slices[0], dict):
        raise ConfigError(f"{where}: a slice is a mapping with sources, got {slices[0]!r}")
    unknown = sorted(set(slices[0]) - SLICE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: slice option '{unknown[0]}' is not supported by fda-merge")
    return slices[0]


def _slice_base(doc: dict[str, Any], the_slice: dict[str, Any] | None, where: str) -> str | None:
    base, own = doc.get("base_model"), (the_slice or {}).get("base_model")
    if own and base and not _same(own, base):
        raise ConfigError(f"{where}: the slice's base_model '{own}' differs from base_model '{base}'; give one")
    return own or base


def _inputs(doc: dict[str, Any], the_slice: dict[str, Any] | None, where: str) -> list[dict[str, Any]]:
    if the_slice is not None:
        return _inputs_from_slice(the_slice, where)
    return [
        {"model": _reference(m, where), "parameters": _drop(m.get("parameters") or {})} for m in doc.get("models") or []
    ]


def _inputs_from_slice(the_slice: dict[str, Any], where: str) -> list[dict[str, Any]]:
    sources = the_slice.get("sources") or []
    ranges = {tuple(source.get("layer_range") or ()) for source in sources if isinstance(source, dict)}
    only = next(iter(ranges)) if len(ranges) == 1 else ()
    if len(only) != 2 or only[0] != 0 or not all(isinstance(i, int) and not isinstance(i, bool) for i in only):
        raise ConfigError(
            f"{where}: slice sources must all take the same layer_range [0, layers], got {sorted(ranges)}"
        )
    return [{"model": _reference(s, where), "parameters": _drop(s.get("parameters") or {})} for s in sources]


def _slice_end(the_slice: dict[str, Any] | None) -> int | None:
    """The end of the (single, checked) slice's layer_range: the layer count the file expects."""
    sources = (the_slice or {}).get("sources") or []
    return int(sources[0]["layer_range"][1]) if sources else None


def _reference(entry: Any, where: str) -> str:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: every models entry is a mapping with a model key, got {entry!r}")
    model = entry.get("model")
    if not isinstance(model, str):
        raise ConfigError(f"{where}: every model entry needs a model path, got {entry!r}")
    return model  # BASE+ADAPTER: a LoRA adapter applied to BASE (fda_core/checkpoints/lora.py)


def _parameters(method: str, parameters: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = dict(parameters)
    if method in RESCALED:
        rescale = parameters.pop("rescale", RESCALED[method])
        parameters["rescale"] = "l1" if rescale is True else "none" if rescale is False else rescale
    elif method in NEVER_RESCALED and parameters.pop("rescale", False) is not False:
        raise ConfigError(
            f"{where}: parameters.rescale: fda-merge's {method} has no L1 rescale; drop rescale "
            "(mergekit's default, false) or use a method that takes it (dare_*, della*, breadcrumbs_ties)"
        )
    for key, default in MERGEKIT_DEFAULTS.get(method, {}).items():
        parameters[key] = _layered_setting(parameters.get(key), default)
    return parameters


def _layered(high: dict[str, Any], low: dict[str, Any]) -> dict[str, Any]:
    """Settings read from `high` first and, where none of its conditions matches a tensor, from `low`."""
    return {**low, **{key: _layered_setting(setting, low.get(key)) for key, setting in high.items()}}


def _layered_setting(high: Any, low: Any) -> Any:
    if high is None:
        return low
    if low is None:
        return high
    return _conditions(high) + _conditions(low)


def _conditions(setting: Any) -> list[Any]:
    """A setting as a list of {filter, value} conditions, the first match winning (mergekit's order)."""
    if isinstance(setting, dict) and "value" in setting:
        return [setting]
    if isinstance(setting, list) and all(isinstance(item, dict) for item in setting):
        return list(setting)  # conditions already (an empty list matches nothing)
    return [{"value": setting}]  # a scalar or a gradient: always matches


def _drop(parameters: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in parameters.items() if k not in DROPPED_PARAMETERS}


def _same(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")
