"""LoRA students (peft): low-rank adapters on networks that share the frozen teacher's weights.

`lora_copy(teacher, ...)` builds a second module tree over the *same* parameter tensors as the teacher (a deepcopy whose
memo maps every teacher tensor to itself) and injects peft LoRA layers into its diffusers UNet. The student and the
auxiliary / fake score of a method are two such copies: memory holds one base network and three small sets of adapters
instead of three networks, nothing switches adapters globally (each copy owns its layers, so gradient checkpointing
recomputes the right ones), and the teacher is never modified. What a LoRA network saves and ships is its adapter
weights (`shipped_state`); loading fills them into a fresh copy of the same teacher (`load_shipped_state`).
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

ADAPTER = "default"
LORA_KEY = "lora_"  # every adapter tensor's state-dict name holds it (peft's lora_A / lora_B)


def unet_of(module: nn.Module) -> nn.Module:
    """The diffusers UNet inside a denoiser (the module that supports gradient checkpointing), or a clear refusal."""
    for sub in module.modules():
        if getattr(sub, "_supports_gradient_checkpointing", False):
            return sub
    raise ValueError("student: lora needs a diffusers UNet to adapt; this teacher's network "
                     f"({type(module).__name__}) has none; use student=full")


def lora_config(rank: int, targets: tuple[str, ...]):
    from peft import LoraConfig

    # alpha = rank: the adapter's output scale is 1 at every rank, so changing the rank does not change the step size.
    return LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), init_lora_weights=True)


def lora_copy(teacher: nn.Module, rank: int, targets: tuple[str, ...]) -> nn.Module:
    """A trainable LoRA copy of `teacher` whose base weights are the teacher's own tensors (frozen), adapters on the
    UNet's modules named in `targets` (matched as peft matches: a full name or a dotted suffix)."""
    from peft import inject_adapter_in_model

    shared = {id(t): t for t in itertools.chain(teacher.parameters(), teacher.buffers())}
    copied = copy.deepcopy(teacher, memo=shared)
    unet = unet_of(copied)
    names = {name for name, _ in unet.named_modules()}
    if not any(name == t or name.endswith("." + t) for name in names for t in targets):
        raise ValueError(f"lora_targets: none of {', '.join(targets)} names a module of this teacher's UNet "
                         f"(e.g. {', '.join(sorted(n.rsplit('.', 1)[-1] for n in names if n)[:8])})")
    inject_adapter_in_model(lora_config(rank, targets), unet, adapter_name=ADAPTER)
    for name, p in copied.named_parameters():
        p.requires_grad_(LORA_KEY in name)
    return copied.train()


def is_lora(module: nn.Module) -> bool:
    return any(LORA_KEY in name for name, _ in module.named_parameters())


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer should hold: all of a full network (as built: tests inject frozen ones), the
    adapters of a LoRA one."""
    if not is_lora(module):
        return list(module.parameters())
    return [p for name, p in module.named_parameters() if LORA_KEY in name]


def shipped_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """What a network saves: its full state dict, or a LoRA copy's adapter tensors only (the base is the teacher's)."""
    state = module.state_dict()
    return {k: v for k, v in state.items() if LORA_KEY in k} if is_lora(module) else state


def load_shipped_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `shipped_state` output into a network of the same kind; every adapter tensor must be there."""
    if not is_lora(module):
        module.load_state_dict(state)
        return
    expected = {k for k in module.state_dict() if LORA_KEY in k}
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(f"student: LoRA weights do not fit this student (missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}); was it saved with another lora_rank or lora_targets?")
    module.load_state_dict(state, strict=False)


def adapter_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The UNet's adapter weights in peft's format (names relative to the UNet, without the adapter name): what
    diffusers' `save_lora_weights(unet_lora_layers=...)` and peft's `set_peft_model_state_dict` take."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(unet_of(module), adapter_name=ADAPTER).items()}


def merged_unet(module: nn.Module) -> nn.Module:
    """A plain diffusers UNet with the adapters folded into its weights (a copy: the shared base stays the teacher's)."""
    unet = copy.deepcopy(unet_of(module))
    for sub in list(unet.modules()):
        if hasattr(sub, "merge") and hasattr(sub, "base_layer"):
            sub.merge()
    from peft.tuners.tuners_utils import BaseTunerLayer

    def unwrap(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if isinstance(child, BaseTunerLayer):
                setattr(parent, name, child.get_base_layer())
            else:
                unwrap(child)

    unwrap(unet)
    return unet
