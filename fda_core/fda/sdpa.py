"""Attention kernels that support a double backward.

Construction differentiates through the gradient of the block (Eq. 2), and the fused
flash / memory-efficient SDPA kernels have no double backward: only the math kernel does.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from torch.nn.attention import SDPBackend, sdpa_kernel


def second_order_attention() -> AbstractContextManager:
    return sdpa_kernel([SDPBackend.MATH])
