"""Which transform lists a config applies, worked out from the specs alone (no torchvision import),
so that training, eval and the torchvision-free predict path agree on them."""

from __future__ import annotations

from typing import Any, Sequence

from dltool.config.spec import Spec

# Transforms whose output does not depend on the random state: what eval keeps of a train list.
DETERMINISTIC = {
    "Resize", "CenterCrop", "ToTensor", "ToImage", "ToDtype", "ConvertImageDtype", "PILToTensor",
    "Normalize", "Grayscale", "RGB", "Pad", "Identity", "ToPureTensor",
}
_DETERMINISTIC_LOWER = {name.lower() for name in DETERMINISTIC}


def deterministic_part(specs: Sequence[Spec]) -> tuple[Spec, ...]:
    """The steps of a train list that eval keeps: random crops become their centred version."""
    kept = []
    for spec in specs:
        name = spec.name.lower()
        if name in _DETERMINISTIC_LOWER:
            kept.append(spec)
        elif name in ("randomresizedcrop", "randomcrop"):
            size = spec.kwargs.get("size", spec.args[0] if spec.args else None)
            if size is not None and name == "randomresizedcrop":
                kept.append(Spec("Resize", (size,), key=spec.key, marks=spec.marks))
            if size is not None:
                kept.append(Spec("CenterCrop", (size,), key=spec.key, marks=spec.marks))
    return tuple(kept)


def transform_specs(transforms: Any) -> tuple[tuple[Spec, ...], tuple[Spec, ...]]:
    """(train, eval) transform lists; a missing list falls back to the other (eval keeps the fixed
    part of train), and with neither, both are [ToTensor]."""
    train_specs, eval_specs = transforms.train, transforms.eval
    if train_specs is None and eval_specs is None:
        return (Spec("ToTensor"),), (Spec("ToTensor"),)
    if eval_specs is None:
        return tuple(train_specs), deterministic_part(train_specs)
    return tuple(train_specs if train_specs is not None else eval_specs), tuple(eval_specs)
