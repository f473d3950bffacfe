"""Checkpoints as safetensors + JSON (no pickle): round-trips, discovery, and refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from core.checkpoints import (
    checkpoint_path,
    flatten_state,
    list_checkpoints,
    load_state,
    save_state,
    unflatten_state,
)


def _nested_state():
    g = torch.Generator().manual_seed(0)
    return {
        "weights": {"layer.0.weight": torch.randn(3, 4, generator=g), "bias": torch.arange(5, dtype=torch.int64)},
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "step": 17,
        "lr": 1e-3,
        "tiny": 1.2345678901234567e-300,
        "flag": True,
        "nothing": None,
        "name": "run-α",
        "betas": (0.9, 0.999),
        "mixed": [1, "two", 3.0, None, (4, [5, torch.ones(2, dtype=torch.bfloat16)])],
        "per_param": {0: {"exp_avg": torch.zeros(2)}, 1: {"exp_avg": torch.ones(2)}},
        "empty": {},
        "empty_list": [],
    }


def _assert_same(a, b, path="state"):
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_flatten_unflatten_round_trip():
    state = _nested_state()
    tensors, tree = flatten_state(state)
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    json.dumps(tree)  # the tree is plain JSON
    _assert_same(unflatten_state(tensors, json.loads(json.dumps(tree))), state)


def test_save_load_round_trip_and_no_pickle(tmp_path):
    state = _nested_state()
    path = save_state(tmp_path / "ckpt" / "a.safetensors", state, meta={"spec": {"name": "x"}, "step": 3})
    assert path.is_file() and path.with_suffix(".json").is_file()
    assert not list(tmp_path.rglob("*.tmp")), "temporary files must be renamed away"
    doc = json.loads(path.with_suffix(".json").read_text())  # valid JSON
    assert set(doc) == {"meta", "state"}
    flat = load_file(str(path))  # a plain safetensors file
    assert set(flat) == set(flatten_state(state)[0])
    loaded, meta = load_state(path)
    _assert_same(loaded, state)
    assert meta == {"spec": {"name": "x"}, "step": 3}


def test_adam_state_round_trip(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, betas=(0.8, 0.95))
    for _ in range(2):
        opt.zero_grad()
        net(torch.randn(8, 3)).pow(2).mean().backward()
        opt.step()
    sd = opt.state_dict()
    loaded, _ = load_state(save_state(tmp_path / "opt.safetensors", {"opt": sd}))
    got = loaded["opt"]
    assert set(got["state"]) == set(sd["state"]) == {0, 1, 2, 3}  # int keys stay ints
    for k, per_param in sd["state"].items():
        assert set(got["state"][k]) == set(per_param)
        for name, value in per_param.items():
            assert torch.equal(got["state"][k][name], value), (k, name)
    assert got["param_groups"] == sd["param_groups"]
    assert isinstance(got["param_groups"][0]["betas"], tuple)
    # The loaded state drives a fresh optimizer to the same next step.
    net2 = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    net2.load_state_dict(net.state_dict())
    opt2 = torch.optim.Adam(net2.parameters(), lr=1.0)
    opt2.load_state_dict(got)
    x = torch.randn(8, 3)
    for n, o in ((net, opt), (net2, opt2)):
        o.zero_grad()
        n(x).pow(2).mean().backward()
        o.step()
    for p, q in zip(net.parameters(), net2.parameters()):
        assert torch.equal(p, q)


def test_list_checkpoints_finds_the_latest_complete_one(tmp_path):
    d = tmp_path / "checkpoints"
    assert list_checkpoints(d) == []  # missing folder
    for step in (5, 120, 30):
        save_state(checkpoint_path(d, step), {"step": step})
    # A newer .safetensors without its .json sidecar (an interrupted write) is ignored.
    orphan = checkpoint_path(d, 999)
    save_state(orphan, {"step": 999})
    orphan.with_suffix(".json").unlink()
    # Files that do not follow the naming scheme are ignored too.
    save_state(d / "step-12.safetensors", {"step": 12})
    save_state(d / "model.safetensors", {"step": 0})
    assert [s for s, _ in list_checkpoints(d)] == [5, 30, 120]
    latest = list_checkpoints(d)[-1][1]  # what resuming picks (core/train.py)
    assert latest == checkpoint_path(d, 120)
    assert load_state(latest)[0] == {"step": 120}
    assert checkpoint_path(d, 7).name == "step-0000007.safetensors"
    with pytest.raises(FileNotFoundError):
        load_state(orphan)


@pytest.mark.parametrize("bad", [{"x": object()}, {"x": {1.5: 2}}, {"x": {(1, 2): 3}}, [1, {2, 3}],
                                 {"x": b"bytes"}, {"x": torch.nn.Linear(1, 1)}])
def test_unsupported_values_raise_type_error(bad, tmp_path):
    with pytest.raises(TypeError):
        flatten_state(bad)
    with pytest.raises(TypeError):
        save_state(tmp_path / "bad.safetensors", bad)


@pytest.mark.parametrize("state", [{"a.b": torch.zeros(1), "a": {"b": torch.ones(1)}},
                                   {0: torch.zeros(1), "0": torch.ones(1)}], ids=["dotted", "int-vs-str"])
def test_colliding_tensor_paths_round_trip_or_raise(state):
    try:
        tensors, tree = flatten_state(state)
    except (TypeError, ValueError):
        return  # refusing the state is acceptable; silently corrupting it is not
    _assert_same(unflatten_state(tensors, tree), state)
