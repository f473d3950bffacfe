"""The digits classifier: a small CNN for the 16x16 digits benchmark, trained by the studio.

Its penultimate layer (the last conv block's channels, global-average-pooled, as Inception's pool3 is) is the `digits`
feature extractor for FID, KID and precision/recall; its predictions give class accuracy. The weights ship in
core/metrics/weights/digits-classifier.safetensors with a JSON record of how they were trained and their test accuracy.

Train and install:  python -m core.metrics.digits_classifier --install   (one to two minutes on two CPU cores)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.checkpoints import load_state, save_state
from core.data import digits_tensors
from core.metrics.convert import clean_fid_batch, keep_size, to_uint8_rgb

SIZE = 16  # the digits benchmark's resolution (core.data.DIGITS_SIZE)
SPLIT_SEED = 0  # the held-out split is fixed whatever the training seed, so accuracies stay comparable
TEST_FRACTION = 0.2
WEIGHTS = Path(__file__).parent / "weights" / "digits-classifier.safetensors"
INSTALL_COMMAND = "python -m core.metrics.digits_classifier --install"


@dataclass(frozen=True)
class ClassifierConfig:
    channels: tuple[int, int, int] = (32, 64, 64)  # three stages at 16, 8 and 4 pixels; the last is the feature size
    num_classes: int = 10
    dropout: float = 0.2  # on the features, before the linear head


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class DigitsClassifier(nn.Module):
    """[B,1,16,16] in [-1, 1] -> logits [B,10]; `features` gives the pooled penultimate layer [B,channels[-1]]."""

    def __init__(self, config: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        c1, c2, c3 = config.channels
        self.body = nn.Sequential(conv_block(1, c1), conv_block(c1, c1), nn.MaxPool2d(2),
                                  conv_block(c1, c2), nn.MaxPool2d(2), conv_block(c2, c3))
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(c3, config.num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def digits_input(x: torch.Tensor) -> torch.Tensor:
    """clean-fid batch [B,C,H,W] in 0..255 -> the classifier's input [B,1,16,16] in [-1, 1]."""
    x = x.float().mean(dim=1, keepdim=True) / 127.5 - 1  # gray: the mean of the channels
    if x.shape[-2:] != (SIZE, SIZE):
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)
    return x


class DigitsExtractor(nn.Module):
    """The `digits` extractor: clean-fid batch [B,3,H,W] in 0..255 -> penultimate features [B,64]."""

    extractor_name = "digits"

    def __init__(self, classifier: DigitsClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(digits_input(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(digits_input(x))


def load_classifier(path: Path | str = WEIGHTS, device: str = "cpu") -> DigitsClassifier:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"digits classifier: weights {path} are missing; train them with `{INSTALL_COMMAND}`")
    state, meta = load_state(path)
    model = DigitsClassifier(ClassifierConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                  for k, v in meta["config"].items()}))
    model.load_state_dict(state)
    return model.to(device).eval().requires_grad_(False)


# -- data ------------------------------------------------------------------------------------------------------

def digits_split(seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) of the 1,797 digits: a stratified 80/20 split."""
    from sklearn.model_selection import train_test_split

    labels = digits_tensors(SIZE)[1].numpy()
    return train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels, random_state=seed)


def digits_as_seen() -> tuple[torch.Tensor, torch.Tensor]:
    """All digits exactly as the extractor sees them once saved as PNG (uint8-rounded): ([N,1,16,16], [N])."""
    x, y = digits_tensors(SIZE)
    return digits_input(clean_fid_batch(to_uint8_rgb(x), keep_size)), y


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random small affine maps (rotation within 10 degrees, scale within 10 %, shift within 1.5 px), black padding."""
    b = x.shape[0]
    rand = torch.rand(b, 4, generator=generator) * 2 - 1
    angle, scale, shift = rand[:, 0] * math.radians(10), 1 + 0.1 * rand[:, 1], rand[:, 2:] * 1.5 / (SIZE / 2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False) - 1  # +1: grid_sample pads with 0, our black is -1


# -- training --------------------------------------------------------------------------------------------------

@torch.no_grad()
def accuracy(model: DigitsClassifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    model.eval()
    device = next(model.parameters()).device
    pred = torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])
    return int((pred == y).sum()) / len(y)


def train_digits_classifier(seed: int = 0, epochs: int = 20, device: str = "cpu", batch_size: int = 64,
                            lr: float = 3e-3) -> tuple[DigitsClassifier, dict]:
    """Train on the fixed 80 % split; returns (model in eval mode, report with the held-out test accuracy)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x, y = digits_as_seen()
    train_idx, test_idx = (torch.from_numpy(i) for i in digits_split())
    model = DigitsClassifier().to(device)
    steps_per_epoch = math.ceil(len(train_idx) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    for _ in range(epochs):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=generator)]
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(model(augment(x[idx], generator).to(device)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval().requires_grad_(False)
    report = {"test_accuracy": accuracy(model, x[test_idx], y[test_idx]),
              "train_accuracy": accuracy(model, x[train_idx], y[train_idx]),
              "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr,
              "params": sum(p.numel() for p in model.parameters()),
              "n_train": len(train_idx), "n_test": len(test_idx), "split_seed": SPLIT_SEED,
              "train_seconds": round(time.perf_counter() - start, 1), "threads": torch.get_num_threads(),
              "torch": torch.__version__}
    return model, report


@torch.no_grad()
def classify(images, *, model: DigitsClassifier | None = None, batch_size: int = 256, device: str = "cpu") -> np.ndarray:
    """Predicted digit labels [N] for images in any form `core.metrics.images_to_features` takes."""
    extractor = DigitsExtractor(model if model is not None else load_classifier(device=device)).to(device).eval()
    rgb = to_uint8_rgb(images)
    out = [extractor.logits(clean_fid_batch(rgb[i:i + batch_size], keep_size).to(device)).argmax(1).cpu()
           for i in range(0, len(rgb), batch_size)]
    return torch.cat(out).numpy()


def save_classifier(model: DigitsClassifier, report: dict, path: Path | str = WEIGHTS) -> Path:
    command = f"{INSTALL_COMMAND} --seed {report['seed']} --epochs {report['epochs']}"
    meta = {"config": asdict(ClassifierConfig()), "report": report, "test_accuracy": report["test_accuracy"],
            "command": command}
    return save_state(path, model.state_dict(), meta)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.metrics.digits_classifier", description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--install", action="store_true", help=f"write the shipped weights {WEIGHTS}")
    parser.add_argument("--out", type=Path, help="write the weights to this .safetensors path instead")
    args = parser.parse_args(argv)
    model, report = train_digits_classifier(seed=args.seed, epochs=args.epochs, device=args.device)
    out = WEIGHTS if args.install else args.out
    if out is not None:
        report["weights"] = str(save_classifier(model.cpu(), report, out))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
