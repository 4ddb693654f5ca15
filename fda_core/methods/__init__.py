"""Parameter-space merge methods, one module each, registered by name on import."""

import fda_core.fda.method  # noqa: E402, F401  (registers fda)
from fda_core.methods import (  # noqa: F401  (importing registers each method)
    ace,
    arcee_fusion,
    breadcrumbs,
    breadcrumbs_ties,
    dare_linear,
    dare_ties,
    della,
    iso_c,
    iso_cts,
    karcher,
    linear,
    model_stock,
    multislerp,
    nearswap,
    nuslerp,
    passthrough,
    pretrained,
    ram,
    sce,
    slerp,
    svc,
    task_arithmetic,
    ties,
    tsv,
    wudi,
)
from fda_core.methods.registry import get_method, method_names

__all__ = ["get_method", "method_names"]
