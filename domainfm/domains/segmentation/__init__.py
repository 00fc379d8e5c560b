"""Segmentation: generative segmentation in a frozen VAE's latent space (GMS), with a UNet baseline.

Huo, Ouyang, Ourselin, Sparks, "Generative Medical Segmentation", AAAI 2025 (arXiv 2403.18198). ``vae``
(SD-layout MONAI AutoencoderKL), ``sd_vae`` (Stable-Diffusion weight conversion), ``mapper`` (latent mapping
network), ``models`` (segmenters and checkpoints), ``data`` (image + mask pairs into the tile store),
``shapes`` (lesion-like shapes), ``train``, ``evaluate``, ``metrics``, ``fitting`` (fit and evaluate runs)
and ``commands`` (the CLI verbs); the phantom and the GMS-vs-UNet study are in
:mod:`domainfm.studies.segmentation`. Walkthrough: ``docs/segmentation.md``.
"""
