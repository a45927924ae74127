"""What a model file is, told by its content rather than its name, and which command takes it.

A torch.save checkpoint and a TorchScript file are both zip archives; TorchScript's holds `code/`
(and `constants.pkl`): it is a program, and loading it runs its code. An ONNX file is a protobuf
(it starts with field 1, `ir_version`) holding a graph of operators, which runs no Python.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from dltool.errors import CheckpointError

CHECKPOINT, TORCHSCRIPT, ONNX = "checkpoint", "torchscript", "onnx"

# kind -> what the file is, in a message
WHAT = {
    CHECKPOINT: "a dltool checkpoint",
    TORCHSCRIPT: "a TorchScript program (loading it runs the code inside it)",
    ONNX: "an ONNX model file",
}
# kind -> the command line that takes it
TAKEN_BY = {
    CHECKPOINT: "dltool eval, predict or export",
    TORCHSCRIPT: "`dltool predict IMAGE --model {path} --trust-program`, only if you trust where it came from",
    ONNX: "`dltool predict IMAGE --model {path}`",
}


def file_kind(path: str | Path) -> str:
    """checkpoint, torchscript or onnx. Anything else (a run folder, a missing or foreign file) counts
    as a checkpoint: the checkpoint loader says in one line what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        return CHECKPOINT
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
            program = any("/code/" in n or n.endswith("/constants.pkl") for n in names)
            return TORCHSCRIPT if program else CHECKPOINT
        with open(path, "rb") as handle:
            head = handle.read(1)
    except (OSError, zipfile.BadZipFile, ValueError):
        return CHECKPOINT
    if path.suffix.lower() == ".onnx" or head == b"\x08":  # 0x08: protobuf field 1 (ir_version), a varint
        return ONNX
    return CHECKPOINT


def refusal(path: str | Path, kind: str, command: str) -> str:
    """The one line for a file of `kind` given to a command that does not take it."""
    taken = TAKEN_BY[kind].format(path=path)
    return f"{path}: {WHAT[kind]}, which {command} does not take; it goes to {taken}"


def require_checkpoint(target: str | Path, command: str) -> None:
    """Raises CheckpointError naming what `target` is when it is an exported file, not a checkpoint."""
    kind = file_kind(target)
    if kind != CHECKPOINT:
        raise CheckpointError(refusal(target, kind, command))
