"""Segmentation: generative segmentation in a frozen VAE's latent space (GMS).

Huo et al., "Generative Medical Segmentation", AAAI 2025 (arXiv 2403.18198). The VAE, latent mapping
network and UNet baseline arrive with the segmentation issue.
"""
