"""The DVC version of the training data, read from the `.dvc` file `dvc add` writes beside it.

Read as YAML rather than through DVC's Python API, so a model records the version of its data without
importing DVC (a large dependency the service and the flows do not otherwise need); the hash is DVC's own
(md5 of the file's bytes, DVC 3), so `dvc checkout` of that hash gives the same rows back.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml


def dvc_version(data: Path) -> dict[str, Any]:
    """{"dvc_md5", "dvc_file", "dvc_matches"} for data tracked by DVC; {} when it is not (no .dvc file).

    `dvc_matches` is False when the file changed since `dvc add`: the model was trained on rows DVC does not
    hold, and the caller says so."""
    pointer = data.with_name(data.name + ".dvc")
    if not pointer.is_file():
        return {}
    try:
        outs = yaml.safe_load(pointer.read_text())["outs"]
        recorded = next(out["md5"] for out in outs if out.get("path") == data.name)
    except (yaml.YAMLError, KeyError, TypeError, StopIteration) as exc:
        problem = " ".join(str(exc).split()) or type(exc).__name__  # YAML's messages span lines
        raise ValueError(
            f"{pointer}: not a DVC pointer to {data.name} ({problem}); run `dvc add {data}`"
        ) from exc
    return {"dvc_md5": recorded, "dvc_file": str(pointer), "dvc_matches": recorded == md5_of(data)}


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
