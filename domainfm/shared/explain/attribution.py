"""``attribute(deployable, image, method)``: one attribution map of a raw input, through captum.

Methods (captum implementations; options in :data:`OPTIONS`):

* ``integrated_gradients`` (Sundararajan et al., ICML 2017): ``(x - x') * mean of the gradients along the
  straight path from the baseline ``x'`` to ``x``, ``n_steps`` Gauss-Legendre points (captum's default
  rule), ``internal_batch_size`` path points per forward pass (memory). Signed; the map sums to
  ``f(x) - f(x')`` up to captum's convergence delta, which is returned (``delta``).
* ``gradient_shap`` (Lundberg & Lee, NeurIPS 2017): the expectation of ``(x - x') * grad f`` at random
  points between the input and references ``x'`` drawn around the baseline (:func:`.baselines.shap_baselines`),
  ``n_samples`` draws. Signed; completeness holds only in expectation.
* ``occlusion`` (Zeiler & Fergus, ECCV 2014): a window of ``window`` pixels (all channels; default one
  eighth of the shorter side, at least 2) slides with ``stride`` (default half the window) and is set to
  the baseline; each pixel gets the mean drop ``f(x) - f(x occluded)`` over the windows that cover it.
* ``attention_rollout`` (Abnar & Zuidema, ACL 2020): :mod:`.rollout`; ViT-family backbones only.

What is explained (the scalar ``f``) and the default target are described in :mod:`.targets`; baselines
in :mod:`.baselines`. ``dtype="float64"`` runs a float64 copy of the network (tighter completeness checks).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from domainfm.shared.deploy.card import Deployable
from domainfm.shared.explain.baselines import make_baseline, shap_baselines
from domainfm.shared.explain.targets import (
    ExplainError,
    check_image,
    describe,
    explained_scores,
    resolve_target,
)

METHODS = ("integrated_gradients", "gradient_shap", "occlusion", "attention_rollout")
SIGNED = ("integrated_gradients", "gradient_shap")
COMMON_OPTIONS = {"baseline": "mean", "blur_sigma": 0.1, "dtype": "float32"}
OPTIONS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 50, "internal_batch_size": 16, "integration": "gausslegendre"},
    "gradient_shap": {"n_samples": 20, "n_baselines": 16, "noise": 0.25, "stdevs": 0.0, "seed": 0},
    "occlusion": {"window": None, "stride": None, "perturbations_per_eval": 16},
    "attention_rollout": {"head_fusion": "mean"},
}

__all__ = ["METHODS", "OPTIONS", "Attribution", "ExplainError", "attribute", "attribute_batch"]


@dataclass
class Attribution:
    """One input's explanation.

    Attributes:
        method: One of :data:`METHODS`.
        map: Attributions ``[C, H, W]`` (captum methods, per input channel) or ``[H, W]`` (rollout).
        target: Index of the explained output channel.
        target_name: Its name (the card's ``class_names``).
        explained: The explained scalar in words (:func:`.targets.describe`).
        score: ``f(x)``, the explained scalar at the input.
        baseline: The baseline kind (``mean``, ``zeros``, ``blur``; ``None`` for rollout).
        baseline_score: ``f(baseline)`` (``None`` for rollout).
        delta: Integrated gradients' completeness error as captum reports it (convergence delta):
            ``sum(map) - (f(x) - f(baseline))``; ``None`` for other methods.
        options: The method options used.
        details: Method extras (rollout: token counts, ``patch_share``).
    """

    method: str
    map: torch.Tensor
    target: int
    target_name: str
    explained: str
    score: float
    baseline: str | None = None
    baseline_score: float | None = None
    delta: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def signed(self) -> bool:
        """Whether the map is signed evidence (IG, SHAP) rather than a magnitude-like map."""
        return self.method in SIGNED

    @property
    def relative_delta(self) -> float | None:
        """``|delta| / |f(x) - f(baseline)|`` (IG only)."""
        if self.delta is None or self.baseline_score is None:
            return None
        return abs(self.delta) / max(abs(self.score - self.baseline_score), 1e-12)

    def heatmap(self) -> np.ndarray:
        """``[H, W]`` float map for display.

        The channel sum for IG/SHAP (keeps completeness), the channel mean for occlusion (every channel
        holds the same window value), the rollout map as it is.
        """
        values = self.map.detach().double().cpu()
        if values.ndim == 3:
            values = values.sum(0) if self.signed else values.mean(0)
        return values.numpy()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (no map)."""
        return {
            "method": self.method,
            "target": self.target,
            "target_name": self.target_name,
            "explained": self.explained,
            "score": self.score,
            "baseline": self.baseline,
            "baseline_score": self.baseline_score,
            "attribution_sum": float(self.map.double().sum()),
            "delta": self.delta,
            "relative_delta": self.relative_delta,
            "options": {k: v for k, v in self.options.items() if isinstance(v, (int, float, str, type(None)))},
            "details": self.details,
        }


def method_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """Defaults of ``method`` updated by ``options``; unknown methods or option names are refused by name."""
    if method not in METHODS:
        raise ExplainError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    allowed = {**COMMON_OPTIONS, **OPTIONS[method]}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ExplainError(f"unknown option(s) {unknown} for {method}; it takes {sorted(allowed)}")
    merged = {**allowed, **options}
    for name, least in (("n_steps", 2), ("n_samples", 1), ("n_baselines", 1), ("internal_batch_size", 1)):
        if name in merged and int(merged[name]) < least:
            raise ExplainError(f"{method}: {name} must be at least {least}, got {merged[name]}")
    return merged


def _dtype(name: str) -> torch.dtype:
    if name not in ("float32", "float64"):
        raise ExplainError(f"dtype must be float32 or float64, got {name!r}")
    return getattr(torch, name)


def _device(deployable: Deployable) -> torch.device:
    tensor = next(iter(deployable.network.parameters()), None)
    if tensor is None:
        tensor = next(iter(deployable.network.buffers()), torch.empty(0))
    return tensor.device


def attribute_batch(
    deployable: Deployable,
    images: torch.Tensor,
    method: str,
    targets: list[int] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Attributions of a batch of raw inputs (each with its own target); what :func:`attribute` and slides use.

    Args:
        deployable: The deployed model (put in eval mode; left on its device).
        images: Raw inputs ``[B, C, H, W]``.
        method: One of :data:`METHODS`.
        targets: One output index per input; ``None``: each input's default (see :mod:`.targets`).
        **options: Method options (:data:`OPTIONS`) and ``baseline``, ``blur_sigma``, ``dtype``.

    Returns:
        ``maps`` ``[B, C, H, W]`` (rollout ``[B, H, W]``), ``targets``, ``scores`` ``[B]`` (``f(x)``),
        ``baseline_scores`` ``[B]`` or ``None``, ``deltas`` ``[B]`` or ``None``, ``options``, ``details``.
    """
    from captum.attr import GradientShap, IntegratedGradients, Occlusion

    opts = method_options(method, options)
    check_image(deployable.card, images)
    dtype = _dtype(opts["dtype"])
    deployable.network.eval()
    if dtype != torch.float32:
        deployable = Deployable(copy.deepcopy(deployable.network).to(dtype), deployable.card, deployable.source)
    images = images.detach().to(_device(deployable), dtype)
    maps: torch.Tensor | None = None
    details: dict[str, Any] = {}
    if method == "attention_rollout":  # one forward pass gives the scores and the attention
        from domainfm.shared.explain.rollout import attention_rollout

        maps, all_scores, details = attention_rollout(deployable, images, opts["head_fusion"])
    else:
        with torch.no_grad():
            all_scores = explained_scores(deployable, images)
    if targets is None:
        targets = [resolve_target(deployable.card, None, s) for s in all_scores]
    if len(targets) != len(images):
        raise ValueError(f"{len(targets)} targets for {len(images)} inputs")
    picked = torch.tensor(targets, device=images.device)
    out: dict[str, Any] = {"targets": list(targets), "baseline_scores": None, "deltas": None, "details": details}
    out["scores"] = all_scores.gather(1, picked[:, None])[:, 0].detach().double().cpu()
    out["options"] = opts
    if maps is not None:
        out["maps"] = maps.float().cpu()
        return out

    def forward(x: torch.Tensor) -> torch.Tensor:
        return explained_scores(deployable, x)

    baseline = make_baseline(deployable.network, images, opts["baseline"], opts["blur_sigma"])
    with torch.no_grad():
        out["baseline_scores"] = forward(baseline).gather(1, picked[:, None])[:, 0].double().cpu()
    if method == "integrated_gradients":
        maps, delta = IntegratedGradients(forward).attribute(
            images,
            baselines=baseline,
            target=list(targets),
            n_steps=int(opts["n_steps"]),
            method=opts["integration"],
            internal_batch_size=int(opts["internal_batch_size"]),
            return_convergence_delta=True,
        )
        out["deltas"] = delta.detach().double().cpu()
    elif method == "gradient_shap":
        n_refs, parts = int(opts["n_baselines"]), []
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # captum draws with torch's RNG: seeded, caller's state kept
            torch.manual_seed(int(opts["seed"]))
            for i in range(len(images)):
                references = shap_baselines(
                    deployable.network, images, baseline[i : i + 1], n_refs, opts["noise"], opts["seed"]
                )
                parts.append(
                    GradientShap(forward).attribute(
                        images[i : i + 1],
                        baselines=references,
                        n_samples=int(opts["n_samples"]),
                        stdevs=float(opts["stdevs"]),
                        target=targets[i],
                    )
                )
        maps = torch.cat(parts)
    else:
        height, width = images.shape[-2:]
        window = min(int(opts["window"] or max(2, round(min(height, width) / 8))), height, width)
        stride = max(1, int(opts["stride"] or window // 2))
        opts.update(window=window, stride=stride)
        channels = images.shape[1]
        maps = Occlusion(forward).attribute(
            images,
            sliding_window_shapes=(channels, window, window),
            strides=(channels, stride, stride),
            baselines=baseline,
            target=list(targets),
            perturbations_per_eval=int(opts["perturbations_per_eval"]),
        )
    out["maps"] = maps.detach().float().cpu()
    return out


def attribute(
    deployable: Deployable,
    image: torch.Tensor,
    method: str = "integrated_gradients",
    target: str | int | None = None,
    **options: Any,
) -> Attribution:
    """Explains one raw input.

    Args:
        deployable: From :func:`domainfm.shared.deploy.load_deployable` (on any device).
        image: ``[1, C, H, W]`` or ``[C, H, W]`` raw values, as :func:`~domainfm.shared.deploy.read_input` reads.
        method: ``integrated_gradients``, ``gradient_shap``, ``occlusion`` or ``attention_rollout``.
        target: A class/label/channel name or index; ``None``: the predicted class, the highest label, or
            the (largest) segmentation channel.
        **options: ``baseline`` (``mean``/``zeros``/``blur``), ``blur_sigma``, ``dtype`` (``float32``/``float64``)
            and the method's options: IG ``n_steps``, ``internal_batch_size``, ``integration``; SHAP
            ``n_samples``, ``n_baselines``, ``noise``, ``stdevs``, ``seed``; occlusion ``window``, ``stride``,
            ``perturbations_per_eval``; rollout ``head_fusion``.

    Raises:
        ExplainError: Unknown method, option, target or baseline; an input the model cannot take; rollout
            on a non-ViT backbone.
    """
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[0] != 1:
        raise ExplainError(f"attribute explains one input [1, C, H, W], got {list(image.shape)}")
    card = deployable.card
    check_image(card, image)
    index = None
    if target is not None:
        index = resolve_target(card, target)
    result = attribute_batch(deployable, image, method, None if index is None else [index], **options)
    index = result["targets"][0]
    name = card.class_names[index]
    base = result["baseline_scores"]
    return Attribution(
        method=method,
        map=result["maps"][0],
        target=index,
        target_name=name,
        explained=describe(card, name),
        score=float(result["scores"][0]),
        baseline=None if method == "attention_rollout" else result["options"]["baseline"],
        baseline_score=None if base is None else float(base[0]),
        delta=None if result["deltas"] is None else float(result["deltas"][0]),
        options=result["options"],
        details=result["details"],
    )
