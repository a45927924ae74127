"""Config: the one entry point from a YAML file (or a checkpoint's stored data) to a typed Config.

Reading the YAML (`yaml_read`), `base:` inheritance (`inherit`), KEY=VALUE overrides (`overrides`),
validation (`validate`) and the typed Config itself (`schema`) each have their own module; after
`load_config` returns, the rest of dltool trusts the typed Config.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Mapping

from dltool.config.inherit import load_yaml_tree
from dltool.config.overrides import apply_override
from dltool.config.schema import Config, DataConfig, ModelConfig, TrainConfig, TransformsConfig
from dltool.config.spec import Mark, Marks
from dltool.config.usercode import check_run_code
from dltool.config.validate import validate
from dltool.config.yaml_read import dump_yaml

__all__ = ["Config", "DataConfig", "ModelConfig", "TrainConfig", "TransformsConfig", "apply_override",
           "config_from_data", "dump_yaml", "load_config", "validate"]

def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML config, resolve `base:`, apply KEY=VALUE overrides and validate.

    Raises:
        ConfigError: the file is missing or unreadable, the YAML is invalid, or a value is wrong.
    """
    check_run_code(Path(path))
    data, marks = load_yaml_tree(Path(path))
    for text in overrides:
        apply_override(data, marks, text)
    return validate(data, marks, path=str(path))


def config_from_data(data: Mapping, source: str = "checkpoint") -> Config:
    """Validate plain config data (e.g. stored in a checkpoint)."""
    marks = Marks({"": Mark(source)})
    return validate(dict(data), marks, path=None)
