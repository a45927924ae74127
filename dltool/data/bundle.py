"""DataBundle: the datasets `build_data` returns, with what the rest of dltool needs to know of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dltool.errors import DataError

NO_VAL = ("data.val_split: 0: every sample is for training, there is no validation split; use --split train, "
          "or other data (e.g. data.dataset.root=other/folder)")


@dataclass
class DataBundle:
    """Train/val/test datasets (items: (float image tensor C,H,W after transforms, target)) and facts.

    Attributes:
        classes: class names in index order ([] for regression).
        task: "classification" (int targets) or "regression" (float tensor targets).
        input_shape: one sample after eval transforms, without the batch dimension.
        split: plain data describing the split used; `build_data(..., split_state=split)` repeats it.
        bad_files: (path, reason) of every file the scan skipped.
        channels: the channel count images were converted to.
        decode: how image files were decoded (dltool.data.draft.DecodeSize).
    """

    train: Any
    val: Any
    test: Any
    classes: list[str]
    task: str
    input_shape: tuple[int, ...]
    split: dict
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    channels: int = 3
    dataset_name: str = ""
    decode: Any = None  # the DecodeSize image files were read at (dltool.data.draft)

    def dataset(self, split_name: str) -> Any:
        """The dataset of one split.

        Raises:
            DataError: the split is unknown or was not built.
        """
        if split_name not in ("train", "val", "test"):
            raise DataError(f"unknown split {split_name!r}; allowed: train, val, test")
        found = getattr(self, split_name)
        if found is None and split_name == "val" and self.split.get("val_split") == 0:
            raise DataError(NO_VAL)
        if found is None:
            raise DataError(f"{self.dataset_name or 'dataset'}: the {split_name} split was not built")
        return found

    def sample_ids(self, split_name: str) -> list[str]:
        """The path (or "index N") of each sample of a split, in dataset order."""
        return list(self.dataset(split_name).ids)
