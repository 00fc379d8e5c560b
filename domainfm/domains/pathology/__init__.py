"""Pathology: whole-slide tiling and PLUTO-style self-supervised pretraining.

Juyal et al., "PLUTO: Pathology-Universal Transformer", 2024 (arXiv 2405.07905). Slide access, tiling,
pretraining and tile/slide heads arrive with the pathology issue.
"""
