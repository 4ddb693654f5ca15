"""Parameter-space merge methods, one module each, registered by name on import."""

import fda_core.fda.method  # noqa: E402, F401  (registers fda)
from fda_core.methods import (  # noqa: F401  (importing registers each method)
    ace,
    breadcrumbs,
    dare_linear,
    dare_ties,
    iso_c,
    iso_cts,
    linear,
    model_stock,
    pretrained,
    slerp,
    svc,
    task_arithmetic,
    ties,
    tsv,
    wudi,
)
from fda_core.methods.registry import get_method, method_names

__all__ = ["get_method", "method_names"]
