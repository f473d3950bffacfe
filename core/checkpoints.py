"""Checkpoints as safetensors + JSON, never pickle.

A nested state (dicts, lists, tensors, numbers, strings) is split into a flat tensor dict for safetensors and a
JSON tree in which every tensor is replaced by {"__tensor__": key}. Loading reverses it exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from core.run_files import checkpoint_path, list_checkpoints

__all__ = ["checkpoint_path", "flatten_state", "list_checkpoints", "load_state", "save_state", "unflatten_state"]


def flatten_state(state, prefix: str = "") -> tuple[dict[str, torch.Tensor], object]:
    tensors: dict[str, torch.Tensor] = {}

    def walk(node, path):
        if isinstance(node, torch.Tensor):
            if path in tensors:
                raise ValueError(f"checkpoint: two entries map to the tensor name {path!r}; rename a key")
            # safetensors needs contiguous tensors that do not share storage.
            tensors[path] = node.detach().to("cpu").contiguous().clone()
            return {"__tensor__": path}
        if isinstance(node, dict):
            return {"__dict__": [[_key(k), walk(v, f"{path}.{k}" if path else str(k))] for k, v in node.items()]}
        if isinstance(node, (list, tuple)):
            return {"__list__": [walk(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(node)],
                    "tuple": isinstance(node, tuple)}
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"checkpoint: cannot store a value of type {type(node).__name__} at {path!r}")

    return tensors, walk(state, prefix)


def _key(k):
    if isinstance(k, (str, int)):
        return k
    raise TypeError(f"checkpoint: dict keys must be str or int, got {type(k).__name__}")


def unflatten_state(tensors: dict[str, torch.Tensor], tree):
    def walk(node):
        if isinstance(node, dict):
            if "__tensor__" in node:
                return tensors[node["__tensor__"]]
            if "__dict__" in node:
                return {k: walk(v) for k, v in node["__dict__"]}
            if "__list__" in node:
                items = [walk(v) for v in node["__list__"]]
                return tuple(items) if node.get("tuple") else items
        return node

    return walk(tree)


def save_state(path: Path | str, state, meta: dict | None = None) -> Path:
    """Write `path` (.safetensors) and its .json sidecar atomically (temp files, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, tree = flatten_state(state)
    tmp_t, tmp_j = path.with_suffix(".safetensors.tmp"), path.with_suffix(".json.tmp")
    save_file(tensors, str(tmp_t))
    tmp_j.write_text(json.dumps({"meta": meta or {}, "state": tree}, indent=1))
    os.replace(tmp_j, path.with_suffix(".json"))
    os.replace(tmp_t, path)  # the .safetensors appears last: its presence means the pair is complete
    return path


def load_state(path: Path | str, device: str | torch.device = "cpu"):
    """Returns (state, meta) saved by `save_state`."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not path.is_file() or not sidecar.is_file():
        raise FileNotFoundError(f"checkpoint: {path} or its .json sidecar is missing")
    doc = json.loads(sidecar.read_text())
    tensors = load_file(str(path), device=str(device))
    return unflatten_state(tensors, doc["state"]), doc.get("meta", {})
