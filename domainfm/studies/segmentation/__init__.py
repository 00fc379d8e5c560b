"""Segmentation studies: phantom image/mask pairs of two sites, the GMS-vs-UNet study, quickstart section."""
