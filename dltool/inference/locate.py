"""Which layer of a model an exporter cannot take: the deepest module, along the path of modules
that fail, that fails on its own with the input it receives in the whole model's forward pass."""

from __future__ import annotations

from typing import Any, Callable


def failing_layer(model: Any, inputs: Any, fails: Callable[[Any, tuple], str | None]) -> str:
    """One line naming the layer `fails` reports a reason for (index path and type), and the reason.

    Args:
        model: the model whose export failed.
        inputs: a batch it takes.
        fails: (module, args) -> None when that module exports alone, else the reason it does not.
    """
    import torch

    received: dict[Any, tuple] = {}
    hooks = [m.register_forward_pre_hook(lambda module, args: received.setdefault(module, args))
             for m in model.modules()]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    name, module, reason = "", model, None
    while True:
        found = None
        for child_name, child in module.named_children():
            why = fails(child, received[child]) if child in received else None
            if why is not None:
                found = (child_name, child, why)
                break
        if found is None:
            break
        name = f"{name}.{found[0]}" if name else found[0]
        module, reason = found[1], found[2]
    if reason is None:
        reason = fails(model, (inputs,)) or "the exporter failed on the whole model only"
        return f"the model cannot be exported: {reason}"
    return f"layer {name} ({type(module).__name__}) cannot be exported: {reason}"
