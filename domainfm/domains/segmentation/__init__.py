"""Segmentation: generative segmentation in a frozen VAE's latent space (GMS), with a UNet baseline.

Huo, Ouyang, Ourselin, Sparks, "Generative Medical Segmentation", AAAI 2025 (arXiv 2403.18198).
``vae`` (SD-layout MONAI AutoencoderKL), ``sd_vae`` (Stable-Diffusion weight conversion), ``mapper``
(latent mapping network), ``models`` (segmenters and checkpoints), ``data`` (image + mask pairs into the
tile store), ``phantom``, ``train``, ``evaluate``, ``metrics``, ``workflow`` (the phantom study) and
``commands`` (the CLI verbs). Walkthrough: ``docs/segmentation.md``.
"""
