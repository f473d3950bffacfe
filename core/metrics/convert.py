"""Images as clean-fid sees them: our arrays and tensors turned into the batches its folder loader would yield.

clean-fid reads a PNG with PIL, converts it to RGB (a grayscale image is repeated on three channels, an alpha channel
is dropped), applies `custom_fn_resize` to the uint8 HWC array and makes a [3, H, W] float tensor of values in 0..255.
Doing exactly that here makes features of in-memory samples equal to features of the same samples saved as PNG.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from core.images import to_uint8


def to_uint8_rgb(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 [N,H,W] / [N,H,W,C] / [N,C,H,W] or a float tensor [N,C,H,W] in [-1, 1] -> uint8 [N,H,W,3].

    Float tensors are rounded to uint8 as our samplers' PNGs are (core.images.to_uint8). A 4-D numpy array is read
    as [N,H,W,C] when its last axis has 1, 3 or 4 entries, else as [N,C,H,W]; a uint8 tensor is always [N,C,H,W].
    """
    if isinstance(images, torch.Tensor):
        if images.dtype.is_floating_point:
            _check_ndim(images, (4,))
            images = to_uint8(images)  # [N,H,W] or [N,H,W,C]
        elif images.dtype == torch.uint8:
            _check_ndim(images, (3, 4))
            images = images.cpu().numpy()
            images = images if images.ndim == 3 else images.transpose(0, 2, 3, 1)
        else:
            raise ValueError(f"images: a tensor must be float in [-1, 1] or uint8, got {images.dtype}")
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise ValueError(f"images: arrays must be uint8 (0..255), got {arr.dtype}; pass float images as a torch "
                         "tensor [N,C,H,W] in [-1, 1]")
    _check_ndim(arr, (3, 4))
    if arr.ndim == 3:
        arr = arr[..., None]
    elif arr.shape[-1] not in (1, 3, 4):
        if arr.shape[1] not in (1, 3, 4):
            raise ValueError(f"images: cannot tell the channel axis of shape {arr.shape} (1, 3 or 4 channels)")
        arr = arr.transpose(0, 2, 3, 1)
    if arr.shape[0] == 0:
        raise ValueError("images: got no images")
    if arr.shape[-1] == 1:
        return np.repeat(arr, 3, axis=-1)  # PIL's convert("RGB") of a grayscale image
    return np.ascontiguousarray(arr[..., :3])  # RGBA -> RGB drops alpha, as PIL's convert does


def _check_ndim(x, allowed: tuple[int, ...]) -> None:
    if x.ndim not in allowed:
        raise ValueError(f"images: expected {' or '.join(f'{n}-D' for n in allowed)} input, got shape {tuple(x.shape)}")


def keep_size(img: np.ndarray) -> np.ndarray:
    """clean-fid `custom_fn_resize` for small extractors: no resize; float32 HWC keeps 0..255 exactly."""
    return np.asarray(img, dtype=np.float32)


def clean_fid_batch(rgb: np.ndarray, fn_resize: Callable | None) -> torch.Tensor:
    """uint8 [N,H,W,3] -> float [N,3,H',W'] in 0..255, as clean-fid's ResizeDataset makes each item."""
    if fn_resize is keep_size:  # the same values as the loop below, without a Python loop over the images
        return torch.from_numpy(rgb.astype(np.float32).transpose(0, 3, 1, 2)).contiguous()
    if fn_resize is None:
        from cleanfid.resize import build_resizer

        fn_resize = build_resizer("clean")  # clean-fid's default: PIL bicubic to 299x299 on float32
    return torch.stack([_as_tensor(fn_resize(img)) for img in rgb])


def _as_tensor(img: np.ndarray) -> torch.Tensor:
    """torchvision's ToTensor as clean-fid applies it: uint8 is scaled to [0, 1] then by 255, float32 kept."""
    import torchvision.transforms.functional as TF

    if img.dtype == np.uint8:
        return TF.to_tensor(np.array(img)) * 255
    if img.dtype == np.float32:
        return TF.to_tensor(img)
    raise ValueError(f"images: a resize function must return uint8 or float32 arrays, got {img.dtype}")
