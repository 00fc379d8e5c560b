"""Pathology studies: phantom slides and their ground truth, the PLUTO phantom study, tiling benchmark."""
