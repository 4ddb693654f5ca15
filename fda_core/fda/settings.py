"""FDA's merge parameters (`method: fda`), with the paper's defaults."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from fda_core.fda.adaptation import AdaptationSettings, Granularity
from fda_core.fda.construction import ConstructionSettings
from fda_core.params import Params

EQ5_LR = 1e-5  # adapting weights from θ0 (vision setting)
EQ6_LR = 1e-2  # adapting elementwise coefficients
OUTSIDE_DEFAULT = "task_arithmetic"  # outside the blocks when the blocks start from θ0 (Eq. 5)
# The recommended default (docs/fda.md, "Why the default"): Eq. 6 refining TSV-M with one coefficient
# per output row and per-task directions; on TEXT-3 +1.6 points over task arithmetic, where Eq. 5 tied it.
DEFAULT_INIT = "tsv"
DEFAULT_COEFFICIENTS: Granularity = "row"
WITHOUT_TASK_DIRECTIONS = ("pretrained", "task_arithmetic")  # no merge θm to correct: TA's α are per task
Preset = Literal["fast", "balanced", "thorough", "llm", "decoder"]
PRESETS: dict[str, dict[str, Any]] = {  # what a preset fixes unless a parameter says otherwise
    "fast": {"anchors": 32, "tokens": 8, "construction_steps": 150, "adaptation_epochs": 50},
    "balanced": {"anchors": 32, "tokens": 16, "construction_steps": 300, "adaptation_epochs": 100},
    "thorough": {"anchors": 64, "tokens": 32, "construction_steps": 1200, "adaptation_epochs": 100},
    # The paper's LLaMA-2-13B recipe (its Table 4 column, method doc §4): FFN-only blocks, 8192 anchors
    # with no token axis (an FFN is position-wise), 200 construction steps, Eq. 6 on TA λ 0.5 with
    # elementwise coefficients, batch 8192, 50 epochs, cosine.
    "llm": {
        "anchors": 8192, "tokens": 1, "construction_steps": 200, "adaptation_epochs": 50, "batch_size": 8192,
        "ffn_only": True, "init": "task_arithmetic", "init_parameters": {"lambda": 0.5},
        "coefficients": "elementwise",
    },
    # The measured SmolLM2-135M row (docs/fda.md): FFN-only blocks refining the default TSV start (Eq. 6,
    # row coefficients) on 64 one-token anchors, 40 steps, 30 epochs; above TSV on three seeds of full
    # fine-tunes, level with TIES on LoRA experts; init: wudi kept more on one seed, at ~10× the time.
    "decoder": {
        "anchors": 64, "tokens": 1, "construction_steps": 40, "adaptation_epochs": 30, "ffn_only": True,
    },
}  # fmt: skip
DEFAULT_PRESET: Preset = "balanced"


class FdaParams(Params):
    preset: Preset = Field(
        DEFAULT_PRESET,
        description="the budget (anchors, tokens, steps, epochs); llm: the paper's LLM recipe;"
        " decoder: FFN-only FDA on TSV at the budget measured on SmolLM2",
    )
    init: str = Field(DEFAULT_INIT, description="pretrained (Eq. 5) or a parameter-space method to refine (Eq. 6)")
    init_parameters: dict[str, Any] = Field(default_factory=dict, description="parameters of the init method")
    outside: str | None = Field(
        None,
        description="parameter-space method for the tensors outside the blocks (embeddings, final norms);"
        " default: the init method, or OUTSIDE_DEFAULT when init is pretrained",
    )
    outside_parameters: dict[str, Any] = Field(default_factory=dict, description="parameters of `outside`")
    anchors: int = Field(PRESETS[DEFAULT_PRESET]["anchors"], ge=1, description="anchors n per (layer, task)")
    tokens: int = Field(
        PRESETS[DEFAULT_PRESET]["tokens"], ge=1, description="tokens T per anchor (text; vision uses the patch count)"
    )
    anchor_init: Literal["gaussian", "weights"] = "gaussian"
    sigma: float | Literal["auto"] = Field(
        0.01, description="scale of the Gaussian initial anchors, or auto: chosen by trial on one block (App. C.5)"
    )
    construction_steps: int = Field(PRESETS[DEFAULT_PRESET]["construction_steps"], ge=0)
    construction_lr: float = Field(1e-2, gt=0)
    tolerance: float = Field(1e-4, ge=0, description="plateau: stop when mean (1 − cos) improves less than this …")
    patience: int = Field(100, ge=1, description="… over this many steps")
    adaptation_loss: Literal["cosine", "mse"] = "cosine"
    adaptation_epochs: int = Field(PRESETS[DEFAULT_PRESET]["adaptation_epochs"], ge=0)
    adaptation_lr: float | None = Field(None, gt=0, description="default 1e-5 from pretrained, 1e-2 for coefficients")
    batch_size: int = Field(128, ge=1)
    adaptation_dtype: Literal["float32", "bfloat16"] = "float32"
    coefficients: Granularity = Field(
        DEFAULT_COEFFICIENTS, description="Eq. 6: one α per entry, per output row, per tensor"
    )
    task_directions: bool | None = Field(
        None,
        description="Eq. 6 on a merge θm also trains a coefficient per task vector (from 0) beside θm's;"
        " default: on unless init is pretrained or task_arithmetic",
    )
    calibration_use: Literal["augment", "init"] = Field(
        "augment", description="models[].calibration: extra adaptation inputs, or the initial anchors"
    )
    chunk_size: int | None = Field(None, ge=1, description="anchors per chunk of the second-order graph")
    blocks: str | None = Field(None, description="explicit block path, e.g. model.layers")
    ffn_only: bool = False
    chained: bool = Field(
        False, description="block l+1 also adapts on block l's anchors as the merged block l passes them on"
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """The preset fills every parameter it names that the config does not set itself."""
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", DEFAULT_PRESET)
        if not isinstance(preset, str) or preset not in PRESETS:
            return data  # the field's own validation names the allowed values
        fixed = dict(PRESETS[preset])
        if "init" in data:  # the preset's init parameters belong to the preset's init
            fixed.pop("init_parameters", None)
        return {**fixed, **data}

    @model_validator(mode="after")
    def _check_combinations(self) -> FdaParams:
        if not isinstance(self.sigma, str) and not (0 < self.sigma < float("inf")):
            raise ValueError(f"sigma: must be a positive number or auto, got {self.sigma}")
        if self.task_directions and self.init in WITHOUT_TASK_DIRECTIONS:
            raise ValueError(f"task_directions: init {self.init} has no merge to correct (TA's α are per task already)")
        if self.chained and self.ffn_only:
            raise ValueError("chained: an FFN's output is not the next FFN's input (attention lies between); use one")
        return self

    def trains_task_directions(self) -> bool:
        """Whether Eq. 6 adds the per-task directions: as set, or on wherever there is a merge to correct."""
        if self.task_directions is None:
            return self.init not in WITHOUT_TASK_DIRECTIONS
        return self.task_directions

    def construction(self) -> ConstructionSettings:
        return ConstructionSettings(
            steps=self.construction_steps,
            lr=self.construction_lr,
            chunk_size=self.chunk_size,
            tolerance=self.tolerance,
            patience=self.patience,
        )

    def adaptation(self) -> AdaptationSettings:
        default = EQ5_LR if self.init == "pretrained" else EQ6_LR
        lr = self.adaptation_lr or default
        bf16 = self.adaptation_dtype == "bfloat16"
        return AdaptationSettings(
            self.adaptation_loss, self.adaptation_epochs, lr, self.batch_size, bf16, self.coefficients
        )

    def resolved_init_parameters(self) -> dict[str, Any]:
        """The init method's parameters as given (its own defaults for the rest)."""
        return dict(self.init_parameters)

    def outside_method(self) -> tuple[str, dict[str, Any]]:
        """(method, parameters) for the tensors outside the blocks: Eq. 5 keeps no pretrained tensor
        where a parameter-space merge does better."""
        if self.outside is not None:
            return self.outside, dict(self.outside_parameters)
        if self.init != "pretrained":
            return self.init, self.resolved_init_parameters()
        return OUTSIDE_DEFAULT, dict(self.outside_parameters)

    def cache_fields(self) -> dict[str, Any]:
        """What decides a (layer, task)'s anchors; chunking is exact, so chunk_size is not among them."""
        return self.model_dump(
            include={
                "anchors",
                "tokens",
                "anchor_init",
                "sigma",
                "construction_steps",
                "construction_lr",
                "tolerance",
                "patience",
                "blocks",
                "ffn_only",
            }
        )
