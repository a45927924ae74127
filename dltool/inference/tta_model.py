"""The torch side of test-time augmentation: a model that averages its probabilities over views.

`eval --tta` runs the engine's own `evaluate` over this wrapper, so the loss, accuracy and top-5
it reports are those of the averaged prediction, computed exactly as for the plain one.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dltool.inference.tta import apply_torch, views

TINY = 1e-12  # keeps log and logit of a probability that rounds to 0 or 1 finite


class Averaged(nn.Module):
    """Wraps a classifier: forward(x) runs every view of x and returns outputs of the same kind as
    the model's (logits, log-probabilities or probabilities) whose probabilities are the views' mean."""

    def __init__(self, model: nn.Module, modes: Sequence[str], output: str):
        super().__init__()
        self.model = model
        self.modes = tuple(modes)
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shown = views(self.modes, x.shape[-2], x.shape[-1])
        probs = torch.stack([_probabilities(self.model(apply_torch(x, view)).float(), self.output)
                             for view in shown]).mean(0)  # (N, outputs)
        return _as_output(probs, self.output)


def _probabilities(out: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-output probabilities, one column per output (a single sigmoid output stays one column)."""
    if kind == "sigmoid":
        return out.sigmoid()
    if kind == "log_softmax":
        return out.exp()
    if kind == "probabilities":
        return out
    return out.softmax(1)


def _as_output(probs: torch.Tensor, kind: str) -> torch.Tensor:
    """Outputs of `kind` whose probabilities are `probs`: log p for softmax and log_softmax (softmax of
    log p is p, and the loss on them is the averaged prediction's), logit p for sigmoid."""
    if kind == "probabilities":
        return probs
    if kind == "sigmoid":
        return torch.logit(probs.clamp(TINY, 1 - TINY))
    return probs.clamp_min(TINY).log()
