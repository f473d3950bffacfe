"""Distillation methods, one file and one class each; METHODS maps registry keys to classes
(docs/methods.md#the-plug-in-contract)."""

from core.methods.diff_instruct import DiffInstruct
from core.methods.dmd2 import DMD2
from core.methods.emd import EMD
from core.methods.mmd import MMD
from core.methods.mmd_instant import MMDInstant

METHODS = {cls.key: cls for cls in (MMD, MMDInstant, EMD, DiffInstruct, DMD2)}


def build_method(teacher, config, *, total_steps: int, device="cpu", has_data: bool = True):
    """The method object for `config` (its class by `config.key`), given the extra inputs that class declares
    (`extra_inputs`) and no others.

    has_data: whether the teacher comes with a training dataset (an imported teacher has none).
    """
    cls = METHODS[config.key]
    inputs = {"has_data": has_data}
    return cls(teacher, config, total_steps=total_steps, device=device, **{k: inputs[k] for k in cls.extra_inputs})
