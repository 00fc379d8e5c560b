"""What an explanation explains: one scalar per input, chosen by the card's task and a target.

* ``classification``: the **logit** of the target class (default: the predicted class). Logits, not
  softmax probabilities: a probability also moves when other classes' logits move, and completeness
  (integrated gradients) is stated for the explained function itself.
* ``multilabel``: the logit of the target label (default: the label with the highest logit).
* ``segmentation`` (cloud masks, curtains, GMS/UNet masks): the **sum over the output map** of the
  target channel's score (default: the only channel, or the channel with the largest sum). That is the
  sum of logits for sigmoid cards and the sum of probabilities for cards with activation ``none`` (GMS
  and UNet return probabilities), i.e. "the evidence for foreground anywhere in the map"; the
  attribution of a pixel says how much it moves that total. Inputs of another size go through the
  network's own input transform (resize, letterbox or sliding window), as in :func:`domainfm.shared.deploy.predict`.
"""

from __future__ import annotations

import torch

from domainfm.shared.deploy.card import Deployable, ModelCard
from domainfm.shared.errors import DomainfmError
from domainfm.shared.model import TransformError, check_input


class ExplainError(DomainfmError, ValueError):
    """An explanation that cannot be made as asked (unknown target or method, wrong input, wrong model)."""


def check_image(card: ModelCard, image: torch.Tensor) -> None:
    """Refuses inputs the network cannot take (the model contract's :func:`check_input`), naming the model."""
    try:
        check_input(card.input_transform, image, maps=card.sliding_window)
    except TransformError as error:
        raise ExplainError(f"{card.kind}: {error}") from error


def network_scores(deployable: Deployable, images: torch.Tensor) -> torch.Tensor:
    """Raw network scores, keeping the input dtype (so a float64 copy of the network stays float64).

    The network applies its own input transform (geometry, quantisation, standardisation), as in ``predict``.
    """
    return deployable.network(images)


def explained_scores(deployable: Deployable, images: torch.Tensor) -> torch.Tensor:
    """``[B, K]``: one candidate scalar per output channel; the target picks one (see the module docstring)."""
    out = network_scores(deployable, images)
    if deployable.card.task == "segmentation":
        return out.flatten(2).sum(-1)
    return out


def describe(card: ModelCard, name: str) -> str:
    """What the scalar of target ``name`` is, in words (for titles and reports)."""
    if card.task == "classification":
        return f"logit of class '{name}'"
    if card.task == "multilabel":
        return f"logit of label '{name}'"
    quantity = "probabilities" if card.activation == "none" else "logits"
    return f"sum over the map of the '{name}' {quantity}"


def resolve_target(card: ModelCard, target: str | int | None, scores: torch.Tensor | None = None) -> int:
    """The output channel to explain.

    Args:
        card: The deployed model's card.
        target: A class/label name, an index (int or digits), or ``None`` for the default: the largest of
            ``scores`` (predicted class, highest label, largest map sum; a one-channel map's only channel).
        scores: ``[K]`` or ``[1, K]`` explained scores of the input (needed when ``target`` is ``None``).

    Raises:
        ExplainError: An unknown name or an index out of range; the message lists the choices.
    """
    names = list(card.class_names)
    if target is None:
        if len(names) == 1:
            return 0
        if scores is None:
            raise ValueError("the default target needs the input's scores")
        return int(scores.reshape(-1).argmax())
    if isinstance(target, int) or str(target).strip().isdigit():
        index = int(target)
        if 0 <= index < len(names):
            return index
    elif str(target) in names:
        return names.index(str(target))
    choices = ", ".join(f"{i}={n}" for i, n in enumerate(names))
    raise ExplainError(f"unknown target {target!r} for {card.kind}; choose a name or index: {choices}")
