"""FDA's merge parameters (`method: fda`), with the paper's defaults."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from fda_core.fda.adaptation import AdaptationSettings
from fda_core.fda.construction import ConstructionSettings
from fda_core.params import Params

PAPER_TA_LAMBDA = 0.3  # Eq. 6 from task arithmetic starts at λ = 0.3 (ViT, RoBERTa-base)
EQ5_LR = 1e-5  # adapting weights from θ0 (vision setting)
EQ6_LR = 1e-2  # adapting elementwise coefficients


class FdaParams(Params):
    init: str = Field("pretrained", description="pretrained (Eq. 5) or a parameter-space method to refine (Eq. 6)")
    init_parameters: dict[str, Any] = Field(default_factory=dict, description="parameters of the init method")
    anchors: int = Field(64, ge=1, description="anchors n per (layer, task)")
    tokens: int = Field(5, ge=1, description="tokens T per anchor (text models; vision uses the patch count)")
    anchor_init: Literal["gaussian", "weights"] = "gaussian"
    sigma: float = Field(0.01, gt=0)
    construction_steps: int = Field(1200, ge=0)
    construction_lr: float = Field(1e-2, gt=0)
    tolerance: float = Field(1e-4, ge=0, description="plateau: stop when mean (1 − cos) improves less than this …")
    patience: int = Field(100, ge=1, description="… over this many steps")
    adaptation_loss: Literal["cosine", "mse"] = "cosine"
    adaptation_epochs: int = Field(100, ge=0)
    adaptation_lr: float | None = Field(None, gt=0, description="default 1e-5 from pretrained, 1e-2 for coefficients")
    batch_size: int = Field(128, ge=1)
    adaptation_dtype: Literal["float32", "bfloat16"] = "float32"
    chunk_size: int | None = Field(None, ge=1, description="anchors per chunk of the second-order graph")
    blocks: str | None = Field(None, description="explicit block path, e.g. model.layers")
    ffn_only: bool = False

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
        return AdaptationSettings(self.adaptation_loss, self.adaptation_epochs, lr, self.batch_size, bf16)

    def resolved_init_parameters(self) -> dict[str, Any]:
        if self.init == "task_arithmetic" and "lambda" not in self.init_parameters:
            return {**self.init_parameters, "lambda": PAPER_TA_LAMBDA}
        return dict(self.init_parameters)

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
