"""What a classifier's outputs are, and how they become class probabilities.

The loss a model was trained with says what its outputs mean: CrossEntropyLoss trains logits
(softmax), NLLLoss log-probabilities (exp), BCEWithLogitsLoss independent logits (sigmoid), and
after a final Sigmoid or Softmax layer the outputs are probabilities already. A checkpoint stores
the kind (its `output` key) so eval and predict apply the same; one without it (written before the
key existed) is read as softmax, as it always was. A single output (`Linear: {out_features: 1}`
with BCEWithLogitsLoss or Sigmoid + BCELoss) is a binary classifier: p for class 1, 1 - p for
class 0.
"""

from __future__ import annotations

from typing import Any

import torch

KINDS = ("softmax", "sigmoid", "probabilities", "log_softmax")
DEFAULT = "softmax"  # checkpoints written before the `output` key
SIGMOID_LOSSES = {"bcewithlogitsloss", "multilabelsoftmarginloss"}
PROBABILITY_LAYERS = {"sigmoid", "softmax"}


def output_kind(config: Any) -> str:
    """The kind of a classifier's outputs, from its final layer and its loss."""
    layers = config.model.layers
    last = layers[-1].name.lower() if layers else ""
    if last in PROBABILITY_LAYERS:
        return "probabilities"
    if last == "logsoftmax":
        return "log_softmax"
    loss = config.loss.name.lower()
    if loss == "nllloss":
        return "log_softmax"
    if loss in SIGMOID_LOSSES:
        return "sigmoid"
    if loss == "bceloss":
        return "probabilities"
    return "softmax"


def to_probabilities(out: torch.Tensor, kind: str) -> torch.Tensor:
    """(N, classes) probabilities from (N, outputs) model outputs of `kind`; a single output p
    becomes the two columns [1 - p, p]."""
    out = out.float()
    if kind == "sigmoid":
        probs = out.sigmoid()
    elif kind == "log_softmax":
        probs = out.exp()
    elif kind == "probabilities":
        probs = out
    else:
        probs = out.softmax(1)
    if probs.dim() == 2 and probs.shape[1] == 1:
        probs = torch.cat([1 - probs, probs], dim=1)
    return probs


def single_threshold(kind: str) -> float:
    """Where a single output separates class 0 from class 1: a logit at 0, a probability at 0.5."""
    return 0.5 if kind == "probabilities" else 0.0
