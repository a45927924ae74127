"""What the layers, the torchvision models and the stack builder share: the Plan of a composite
layer and how a shape is written in messages. Its own module so that none of the three has to
import another to reach it (they imported each other in a circle before).
"""

from __future__ import annotations

import abc

from torch import nn


class Plan(abc.ABC):
    """A composite layer waiting for its input shape; `dltool.models.builder` calls `build`."""

    @abc.abstractmethod
    def build(self, stack, spec, shape: tuple[int, ...]) -> tuple[nn.Module, tuple[int, ...]]:
        """Build the module for an input of `shape` (no batch dim); return it and its output shape."""


def fmt(shape: tuple[int, ...]) -> str:
    """(16, 5, 5) -> '16x5x5'."""
    return "x".join(str(s) for s in shape) if shape else "a scalar"
