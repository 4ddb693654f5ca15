"""Functional Dual Anchors (Shi, Wen, Liu, 2025): construct anchors per (layer, task), then adapt.

Equation numbers refer to arXiv 2510.21223; the method, defaults and pitfalls are summarised in
docs/fda.md.
"""
