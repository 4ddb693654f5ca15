"""Check a config against its method, and resolve parameters for each tensor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from fda_core.errors import ConfigError
from fda_core.merge.settings import check_setting_shape, layer_position, resolve_setting
from fda_core.methods import get_method
from fda_core.methods.base import MergeMethod, ModelParams, Params

if TYPE_CHECKING:
    from fda_core.config import MergeConfig


def check_method_fit(config: MergeConfig) -> None:
    """Method known, base present if needed, model count, parameter names and values (ValueError)."""
    method = _method(config.method)
    if method.requires_base and not config.base_model:
        raise ValueError(f"method '{method.name}' needs base_model (the model the experts were fine-tuned from)")
    if method.layerwise:
        _check_layerwise(method, config)
        return
    _check_model_count(method, 1 if config.layer_stack else len(config.models))  # a stacked layer has one source
    _check_per_tensor(method, config.parameters, config, "parameters")


def _method(name: str) -> MergeMethod:
    try:
        return get_method(name)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _check_per_tensor(method: MergeMethod, parameters: dict[str, Any], config: MergeConfig, where: str) -> None:
    known = field_names(method.params_type) | field_names(method.model_params_type)
    _check_settings(parameters, known, where, method, method.params_type)
    for index, model in enumerate(config.models):
        own = f"models.{index}.parameters"
        _check_settings(
            model.resolved_parameters(), field_names(method.model_params_type), own, method, method.model_params_type
        )


def _check_layerwise(method: MergeMethod, config: MergeConfig) -> None:
    """FDA: its own settings, then the init method's fit as if it were the method."""
    settings = _validate(method.params_type, config.parameters, "parameters")
    init = _method(settings.init)
    if init.layerwise:
        raise ValueError(f"parameters.init: '{init.name}' is layer-wise itself; pick a parameter-space method")
    _check_model_count(init, len(config.models))
    _check_per_tensor(init, settings.resolved_init_parameters(), config, "parameters.init_parameters")
    name, parameters = settings.outside_method()
    outside = _method(name)
    if outside.layerwise:
        raise ValueError(f"parameters.outside: '{outside.name}' is layer-wise itself; pick a parameter-space method")
    _check_model_count(outside, len(config.models))
    where = (
        "parameters.init_parameters"
        if settings.outside is None and settings.init != "pretrained"
        else "parameters.outside_parameters"
    )
    _check_per_tensor(outside, parameters, config, where)


def _check_model_count(method: MergeMethod, count: int) -> None:
    low, high = method.min_models, method.max_models
    if count < low or (high is not None and count > high):
        wanted = f"exactly {low}" if low == high else f"at least {low}" if high is None else f"{low} to {high}"
        base = " besides base_model" if method.requires_base else ""
        raise ValueError(f"method '{method.name}' takes {wanted} model(s){base}, got {count}")


def field_names(model: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


def _check_settings(
    settings: dict[str, Any], known: set[str], where: str, method: MergeMethod, owner: type[Params]
) -> None:
    for key, setting in settings.items():
        if key not in known:
            raise ValueError(f"{where}.{key}: unknown parameter of '{method.name}'; known: {', '.join(sorted(known))}")
        target = owner if key in field_names(owner) else method.model_params_type
        for value in _leaf_values(setting):
            _validate(target, {key: value}, f"{where}.{key}")
        check_setting_shape(setting, f"{where}.{key}")


def _leaf_values(setting: Any) -> list[Any]:
    if isinstance(setting, dict):
        return _leaf_values(setting.get("value"))
    if isinstance(setting, list):
        return [leaf for item in setting for leaf in _leaf_values(item)]
    return [setting]


def _validate(model: type[BaseModel], values: dict[str, Any], where: str) -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        place = where if not field or where.endswith(f".{field}") else f"{where}.{field}"
        raise ValueError(f"{place}: {error['msg']} (got {error.get('input')!r})") from None


class ParameterResolver:
    """Method parameters for one tensor, with filters and layer gradients applied."""

    def __init__(self, config: MergeConfig, method: MergeMethod, num_layers: int) -> None:
        self.method = method
        self.num_layers = num_layers
        self.shared = config.parameters
        self.per_model = [model.resolved_parameters() for model in config.models]
        self._global_names = field_names(method.params_type)
        self._model_names = field_names(method.model_params_type)

    def for_tensor(self, name: str) -> tuple[Params, list[ModelParams]]:
        t = layer_position(name, self.num_layers)
        try:
            shared = self._resolve(self.shared, name, t)
            params = self.method.params_type.model_validate(
                {k: v for k, v in shared.items() if k in self._global_names}
            )
            model_params = [self._model_params(shared, own, name, t) for own in self.per_model]
        except ValueError as exc:
            raise ConfigError(f"tensor '{name}': {exc}") from None
        return params, model_params

    def _model_params(self, shared: dict[str, Any], own: dict[str, Any], name: str, t: float) -> ModelParams:
        values = {k: v for k, v in shared.items() if k in self._model_names}
        values.update(self._resolve(own, name, t))
        return self.method.model_params_type.model_validate(values)

    @staticmethod
    def _resolve(settings: dict[str, Any], name: str, t: float) -> dict[str, Any]:
        resolved = {key: resolve_setting(setting, name, t) for key, setting in settings.items()}
        return {key: value for key, value in resolved.items() if value is not None}
