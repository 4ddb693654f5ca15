"""fda_core: checkpoint I/O, parameter-space merges and Functional Dual Anchors.

Pure algorithms: imports torch, safetensors, numpy and pydantic, never a web framework,
a queue, a database or a cloud SDK (those live in service/, api/, worker/).
"""

__version__ = "0.1.0"
