"""ClassConditionalPipeline: diffusers' DDPMPipeline loop with class labels, for a class-conditional UNet2DModel.

Distill Studio's `distill-studio export` copies this file verbatim as `pipeline.py` into the folder of an exported
student of a class-conditional teacher (the built-in digits teacher, an imported class-conditional DDPM): diffusers has
no stock pipeline that passes `class_labels` to a UNet2DModel. The folder's model_index.json names it
(`"_class_name": ["pipeline", "ClassConditionalPipeline"]`), so it loads with

    pipe = DiffusionPipeline.from_pretrained(FOLDER, trust_remote_code=True)
    images = pipe(class_labels=[0, 1, 2, 3], num_inference_steps=4).images

(trust_remote_code: diffusers runs a folder's own pipeline.py, even a local one, only when told to).

The stock scheduler in scheduler/ does every step; this file only feeds the UNet what it was trained on:
- class labels: callers give the studio's class ids 0..n-1 (n, or no labels at all, is the null class), and
  `class_labels_map` (in model_index.json) turns id i into the UNet's own label (an imported UNet may keep its null
  label first, say, and its classes after it);
- time: the UNet reads the scheduler's timestep times `timestep_scale` (1 for a UNet trained on diffusers' integer
  levels; the studio's digits UNet reads 1000 t, and a stand-in schedule of M levels below t_top gives 1000 t_top / M).

Self-contained on purpose (it imports torch and diffusers only), so the folder needs no Distill Studio to run.
"""

from __future__ import annotations

import inspect

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class ClassConditionalPipeline(DiffusionPipeline):
    """A class-conditional UNet2DModel and a stock scheduler; `__call__` is DDPMPipeline's plus `class_labels`."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin, class_labels_map: list[int] | None = None,
                 timestep_scale: float = 1.0):
        super().__init__()
        embeds = unet.config.num_class_embeds
        if not embeds:
            raise ValueError("unet: has no class embedding (num_class_embeds); use DDPMPipeline")
        # Default: the UNet's labels are the ids, its last label the null class.
        labels = list(range(embeds)) if class_labels_map is None else [int(i) for i in class_labels_map]
        if len(labels) != embeds or sorted(labels) != list(range(embeds)):
            raise ValueError(f"class_labels_map: must order the UNet's {embeds} labels 0..{embeds - 1}, got {labels}")
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(class_labels_map=labels, timestep_scale=float(timestep_scale))

    @property
    def num_classes(self) -> int:
        """Class ids 0..num_classes-1; id num_classes is the null class."""
        return len(self.config.class_labels_map) - 1

    def _labels(self, class_labels, batch_size: int) -> torch.Tensor:
        """The UNet's labels for the callers' class ids (None: batch_size samples of the null class)."""
        ids = torch.full((batch_size,), self.num_classes) if class_labels is None else \
            torch.as_tensor(class_labels).reshape(-1)
        integers = ids.numel() > 0 and not ids.is_floating_point() and ids.dtype != torch.bool
        if not integers or bool(((ids < 0) | (ids > self.num_classes)).any()):
            raise ValueError(f"class_labels: class ids must be integers in 0..{self.num_classes - 1} "
                             f"({self.num_classes} is the null class), got {class_labels!r}")
        return torch.tensor(self.config.class_labels_map)[ids.long()]

    def _set_timesteps(self, num_inference_steps, timesteps, device) -> None:
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("num_inference_steps: give exactly one of num_inference_steps and timesteps")
        if timesteps is None:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
            return
        if "timesteps" not in inspect.signature(self.scheduler.set_timesteps).parameters:
            raise ValueError(f"timesteps: {type(self.scheduler).__name__} takes no explicit timesteps; "
                             "give num_inference_steps")
        self.scheduler.set_timesteps(timesteps=list(timesteps), device=device)

    def _unet_time(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        scale = self.config.timestep_scale
        if scale == 1.0:
            return t  # the integer level itself, as DDPMPipeline passes it
        # In float64, then cast once to the sample's dtype.
        return torch.tensor(float(t) * scale, dtype=like.dtype, device=like.device)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | list[int] | torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        timesteps: list[int] | None = None,
        batch_size: int = 1,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Sample one image per class id in `class_labels` (or `batch_size` of the null class when None).

        Give `num_inference_steps` or the scheduler's `timesteps`. output_type: "pil", "np" (HWC in [0, 1]), "pt"
        (NCHW in [0, 1]) or "latent" (the UNet's own space, [-1, 1] for images, unclamped). The generator draws the
        initial noise, then whatever the scheduler's steps draw, in order."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type: must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        device = self._execution_device
        labels = self._labels(class_labels, batch_size).to(device)
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        image = randn_tensor((labels.shape[0], self.unet.config.in_channels, *size), generator=generator,
                             device=device, dtype=self.unet.dtype)
        self._set_timesteps(num_inference_steps, timesteps, device)

        for t in self.progress_bar(self.scheduler.timesteps):
            model_output = self.unet(image, self._unet_time(t, image), class_labels=labels).sample
            image = self.scheduler.step(model_output, t, image, generator=generator).prev_sample

        if output_type != "latent":
            image = (image / 2 + 0.5).clamp(0, 1)
            if output_type != "pt":
                image = image.cpu().permute(0, 2, 3, 1).float().numpy()
                if output_type == "pil":
                    image = self.numpy_to_pil(image)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
