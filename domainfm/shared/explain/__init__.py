"""Explanations of deployed models: attribution maps through captum, attention rollout, overlays, slides.

``attribute(load_deployable(CKPT), image, method)`` explains one raw input (what
:func:`domainfm.shared.deploy.read_input` reads) and :func:`render_overlay` draws the map over the input;
``explain_slide`` does the same tile by tile over a whole slide (inputs a domain registers as large), and
``domainfm explain`` wraps both. Methods:

* ``integrated_gradients``: Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks",
  ICML 2017 (arXiv 1703.01365). Completeness: the attributions sum to ``f(x) - f(baseline)``; captum
  reports the error as the convergence delta.
* ``gradient_shap``: Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions", NeurIPS 2017
  (arXiv 1705.07874): expected gradients over random baselines and noisy inputs (SHAP values in
  expectation).
* ``occlusion``: Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014
  (arXiv 1311.2901): the drop of the explained score when a sliding window is set to the baseline.
* ``attention_rollout``: Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020
  (arXiv 2005.00928): attention (plus the residual identity) multiplied through the blocks of a ViT.

The sanity checks of Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018 (arXiv 1810.03292)
are in :mod:`.sanity`: an explanation must change when the model's weights are randomised.

Names are imported on first use, so ``domainfm --help`` (which reads the ``explain`` command's docstring
from :mod:`.cli`) does not import torch.
"""

import importlib
from typing import Any

_EXPORTS = {
    "METHODS": "attribution",
    "Attribution": "attribution",
    "ExplainError": "targets",
    "attribute": "attribution",
    "render_overlay": "overlay",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """The public names, imported from their module on first access (PEP 562)."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
