"""Save nested training state (optimizer, scheduler, RNGs, weighting, sampler) without pickle.

``state_dict`` objects are trees of dicts, lists, tuples, tensors and plain scalars. The
tensors go into a safetensors file under their tree path; the rest of the tree goes into JSON
with the tensors replaced by references. Loading never executes code from the files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from polytask.files import atomic_write


def flatten(obj: Any, tensors: dict[str, torch.Tensor], path: str = "s") -> Any:
    """Tree -> JSON skeleton; tensors are moved into ``tensors`` keyed by their path."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: flatten(v, tensors, f"{path}.{k}") for k, v in obj.items()}}
        # optimizer states are keyed by int: keep the keys' types
        return {"__items__": [[flatten(k, tensors, f"{path}.k{i}"), flatten(v, tensors, f"{path}.{i}")]
                              for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot save state of type {type(obj).__name__} at {path}")


def unflatten(skel: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skel, dict):
        if "__tensor__" in skel:
            return tensors[skel["__tensor__"]]
        if "__dict__" in skel:
            return {k: unflatten(v, tensors) for k, v in skel["__dict__"].items()}
        if "__items__" in skel:
            return {unflatten(k, tensors): unflatten(v, tensors) for k, v in skel["__items__"]}
        if "__tuple__" in skel:
            return tuple(unflatten(v, tensors) for v in skel["__tuple__"])
    if isinstance(skel, list):
        return [unflatten(v, tensors) for v in skel]
    return skel


def save_state(directory: Path, name: str, state: Any) -> list[Path]:
    """Write ``name.safetensors`` and ``name.json`` in ``directory``; returns the paths."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(state, tensors)
    tpath, jpath = directory / f"{name}.safetensors", directory / f"{name}.json"
    save_file(tensors, str(tpath)) if tensors else save_file({"_": torch.zeros(0)}, str(tpath))
    atomic_write(jpath, json.dumps(skeleton).encode())
    return [tpath, jpath]


def load_state(directory: Path, name: str) -> Any:
    tensors = load_file(str(directory / f"{name}.safetensors"))
    skeleton = json.loads((directory / f"{name}.json").read_text())
    return unflatten(skeleton, tensors)
