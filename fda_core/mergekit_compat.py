"""Read a mergekit 0.1.5 YAML into our schema, keeping mergekit's semantics.

What changes in translation: `merge_method` → `method`; a single `slices` entry whose sources
all cover the same layer range becomes `models`; the base model listed among `models` is the
base, not an expert (linear alone averages it in, as mergekit does); DARE's `rescale: true`
means L1-norm matching; `out_dtype` (else `dtype`) is the output dtype. Features we do not
implement (several slices, tokenizer unions, LoRA references) fail loudly instead of merging
differently.
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
DROPPED_PARAMETERS = {"int8_mask"}  # a memory optimisation in mergekit; no effect on the result


def from_mergekit(doc: dict[str, Any], where: str = "config") -> dict[str, Any]:
    unknown = sorted(set(doc) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"{where}: mergekit option '{unknown[0]}' is not supported by fda-merge")
    if doc.get("tokenizer_source") not in (None, "base"):
        raise ConfigError(
            f"{where}: tokenizer_source '{doc['tokenizer_source']}' is not supported; the base's tokenizer is copied"
        )
    method = doc["merge_method"]
    base = doc.get("base_model")
    models = _inputs(doc, where)
    if method == "linear":
        if base and not any(_same(m["model"], base) for m in models):
            if "weight" not in (doc.get("parameters") or {}):
                raise ConfigError(
                    f"{where}: mergekit's linear averages base_model in as well but no weight is given for it "
                    "(mergekit 0.1.5 refuses this file); list the base under models with a weight"
                )
            models.append({"model": base, "parameters": {}})
    else:
        models = [m for m in models if not (base and _same(m["model"], base))]
    return {
        "method": method,
        "base_model": base,
        "models": models,
        "parameters": _parameters(method, doc.get("parameters") or {}),
        "dtype": doc.get("out_dtype") or doc.get("dtype"),
        "layers": _slice_end(doc),
    }


def _inputs(doc: dict[str, Any], where: str) -> list[dict[str, Any]]:
    if doc.get("models") and doc.get("slices"):
        raise ConfigError(f"{where}: give either models or slices, not both")
    if doc.get("slices"):
        return _inputs_from_slices(doc["slices"], where)
    return [
        {"model": _reference(m, where), "parameters": _drop(m.get("parameters") or {})} for m in doc.get("models") or []
    ]


def _inputs_from_slices(slices: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    if len(slices) != 1:
        raise ConfigError(f"{where}: {len(slices)} slices (layer stacking) are not supported; use one slice or models")
    sources = slices[0].get("sources") or []
    ranges = {tuple(source.get("layer_range") or ()) for source in sources}
    only = next(iter(ranges)) if len(ranges) == 1 else ()
    if len(only) != 2 or only[0] != 0 or not all(isinstance(i, int) and not isinstance(i, bool) for i in only):
        raise ConfigError(
            f"{where}: slice sources must all take the same layer_range [0, layers], got {sorted(ranges)}"
        )
    return [{"model": _reference(s, where), "parameters": _drop(s.get("parameters") or {})} for s in sources]


def _slice_end(doc: dict[str, Any]) -> int | None:
    """The end of the (single, checked) slice's layer_range: the layer count the file expects."""
    sources = (doc.get("slices") or [{}])[0].get("sources") or []
    return int(sources[0]["layer_range"][1]) if sources else None


def _reference(entry: Any, where: str) -> str:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: every models entry is a mapping with a model key, got {entry!r}")
    model = entry.get("model")
    if not isinstance(model, str):
        raise ConfigError(f"{where}: every model entry needs a model path, got {entry!r}")
    if "+" in model and not model.startswith(("s3://", "file://", "/", ".")):
        raise ConfigError(
            f"{where}: '{model}': LoRA references (model+adapter) are not supported; merge the adapter first"
        )
    return model


def _parameters(method: str, parameters: dict[str, Any]) -> dict[str, Any]:
    parameters = _drop(parameters)
    if method in ("dare_linear", "dare_ties"):
        rescale = parameters.pop("rescale", True)
        parameters["rescale"] = "l1" if rescale is True else "none" if rescale is False else rescale
    return parameters


def _drop(parameters: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in parameters.items() if k not in DROPPED_PARAMETERS}


def _same(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")
