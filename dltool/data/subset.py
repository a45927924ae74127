"""`data.classes`: keep some classes of any dataset, relabelled 0..k-1 in the order given."""

from __future__ import annotations

from typing import Any, Sequence

from dltool.config.registry import suggest
from dltool.config.spec import located
from dltool.data.sources import RawSplit
from dltool.errors import ConfigError, DataError

KEY = "data.classes"


def chosen_labels(wanted: Sequence[Any], classes: Sequence[str], marks: Any) -> list[int]:
    """The dataset's labels of the `wanted` classes (indices or names), in the order given.

    Raises:
        ConfigError: an unknown name or index, a repeated class, or fewer than two classes.
    """
    labels = []
    for i, item in enumerate(wanted):
        where = f"{KEY}.{i}"
        if isinstance(item, str):
            if item not in classes:
                listed = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
                raise ConfigError(located(f"no class named {item!r}{suggest(item, classes)} (the dataset has: "
                                          f"{listed})", where, marks))
            label = list(classes).index(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            if not 0 <= item < len(classes):
                raise ConfigError(located(f"class index {item} is out of range; the dataset has {len(classes)} "
                                          f"classes (0..{len(classes) - 1})", where, marks))
            label = item
        else:
            raise ConfigError(located(f"expected a class name or index; got {item!r}", where, marks))
        if label in labels:
            raise ConfigError(located(f"class {classes[label]!r} is listed twice", where, marks))
        labels.append(label)
    if len(labels) < 2:
        raise ConfigError(located("list at least two classes (a classifier needs two)", KEY, marks))
    return labels


def subset_classes(raws: dict[str, tuple[RawSplit, list[int]]], wanted: Sequence[Any],
                   marks: Any) -> dict[str, tuple[RawSplit, list[int]]]:
    """Each split's samples of the wanted classes, their labels renumbered 0..k-1 in the order given.

    Raises:
        ConfigError: see `chosen_labels`; DataError: a split keeps no sample.
    """
    first, _ = next(iter(raws.values()))
    if not first.classes:
        raise ConfigError(located("the dataset has no classes (a regression task) to choose from", KEY, marks))
    labels = chosen_labels(wanted, first.classes, marks)
    new_label = {old: new for new, old in enumerate(labels)}
    names = [first.classes[label] for label in labels]
    subset = {}
    for name, (raw, indices) in raws.items():
        kept = [i for i in indices if raw.targets[i] in new_label]
        if not kept:
            raise DataError(located(f"the {name} split has no sample of these classes", KEY, marks))
        relabelled = RawSplit(Relabelled(raw.items, new_label), [new_label.get(t, -1) for t in raw.targets],
                              raw.keys, names, raw.paths, raw.modes)
        subset[name] = (relabelled, kept)
    return subset


class Relabelled:
    """Items of a split with their labels renumbered (only the kept samples are ever read)."""

    def __init__(self, items: Any, new_label: dict[int, int]):
        self.items = items
        self.new_label = new_label

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.items[index]
        return image, self.new_label[int(label)]
