"""Torch-free rules of an evaluation: metric names, reference datasets and their keys (model references: core/refs.py).

The job submitter (workers/submit.py, imported by the web app) checks a request with these before a row is written;
the evaluation itself (workers/evaluate.py) uses the same rules, so both refuse the same input with the same line.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.shapes import EVAL_SETS, SIZE

MIN_N = 10          # why: k-NN manifolds (k = 5) and a covariance need a handful of samples at least
MAX_N = 100_000     # why: features and k-NN distance matrices of this many samples still fit in memory
PRDC_K = 5          # why: Naeem et al. 2020's default neighbourhood size
# Below this many samples an FID/KID is labelled a small-sample estimate. Why: on the digits extractor two disjoint sets
# of 500 real digits already differ by FID 0.38-0.48 (0.08-0.32 at 898), more than the 1-step students' 0.11-0.18 at
# n = 2,000; at 2,000 a set's FID still moves by about a third between seed sets (README, "FID's sampling noise"), the
# least spread at which the students rank apart.
SMALL_SAMPLE_N = 2000

# Requested metric -> the metric names it stores (one Evaluation row each).
METRICS: dict[str, tuple[str, ...]] = {
    "fid": ("fid",),
    "kid": ("kid",),
    "precision": ("precision", "recall", "density", "coverage"),  # one k-NN computation gives all four
    "recall": ("precision", "recall", "density", "coverage"),
    "density": ("precision", "recall", "density", "coverage"),
    "coverage": ("precision", "recall", "density", "coverage"),
    "accuracy": ("accuracy",),                     # the digits classifier's agreement with the requested class
    # Text-to-image models on prompts of the shapes grammar (core/metrics/alignment.py): the share of the prompts'
    # attributes the images show, and the share of images that show every attribute of their prompt.
    "alignment": ("alignment", "alignment_all"),
    "speed": ("ms_per_image", "images_per_s"),     # generation only (with prompt encoding and VAE decoding): no noise
                                                   # drawing, no features
    "modes": ("modes_covered", "modes_quality"),   # toy2d: modes holding >= 1 % of samples; share near a mode
}
REFERENCE_METRICS = ("fid", "kid", "precision", "recall", "density", "coverage")


@dataclass(frozen=True)
class ReferenceData:
    """A dataset evaluations are measured against."""

    name: str                     # the benchmark name (core.data.BENCHMARKS)
    kind: str                     # "image" or "points"
    size: int | None              # how many real items exist (None: drawn from the exact mixture, any n)
    resolution: int               # image side in pixels; 0 for points
    extractors: tuple[str, ...]   # the extractors that apply, the default first
    seeded: bool = False          # the items are those the evaluated seeds draw (a prompt set's scenes)

    def describe(self) -> str:
        if self.seeded:
            return "the rendered scenes of the seeds evaluated"
        return f"{self.size} images" if self.size is not None else "points drawn from the mixture"


REFERENCE_DATA: dict[str, ReferenceData] = {
    "digits": ReferenceData("digits", "image", 1797, 16, ("digits", "inception")),  # scikit-learn's 1,797 digits
    "toy2d-ring": ReferenceData("toy2d-ring", "points", None, 0, ("toy2d",)),
    "toy2d-grid": ReferenceData("toy2d-grid", "points", None, 0, ("toy2d",)),
    # The built-in prompt sets (core/eval_prompts.py): seed s's reference image is scene s of the set, rendered.
    **{name: ReferenceData(name, "image", None, SIZE, ("shapes",), seeded=True) for name in EVAL_SETS},
}
PROMPT_SETS = EVAL_SETS  # the built-in prompt sets' names, for the web side


def check_metrics(metrics) -> tuple[str, ...]:
    """The requested metric names (a list, or comma-separated text), stripped, lowercased and without repeats;
    ValueError naming an unknown one."""
    if isinstance(metrics, str):
        metrics = [metrics]
    names: list[str] = []
    for raw in (part for item in metrics for part in str(item).split(",")):
        name = str(raw).strip().lower()
        if not name:
            continue
        if name not in METRICS:
            raise ValueError(f"metrics: unknown metric {name!r} (known: {', '.join(METRICS)})")
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError(f"metrics: give at least one of {', '.join(METRICS)}")
    return tuple(names)


def stored_metrics(metrics) -> tuple[str, ...]:
    """The metric names the requested ones store, in a fixed order."""
    wanted = {stored for name in check_metrics(metrics) for stored in METRICS[name]}
    order = [stored for names in METRICS.values() for stored in names]
    return tuple(dict.fromkeys(s for s in order if s in wanted))


def check_applicable(metrics, *, model: str, dataset: str, num_classes: int, prompts: str = "") -> None:
    """Refuse metrics that cannot be measured on this model's data (naming `metrics`); `prompts`: the prompt set a
    text-to-image model is evaluated on ('' for other models)."""
    for name in check_metrics(metrics):
        if name in REFERENCE_METRICS and prompts and dataset not in REFERENCE_DATA:
            raise ValueError(f"metrics: {name} needs reference images; {model} is evaluated on a prompt file, which has "
                             f"none (only alignment and speed apply; the built-in sets {', '.join(EVAL_SETS)} have them)")
        if name in REFERENCE_METRICS and dataset not in REFERENCE_DATA:
            raise ValueError(f"metrics: {name} needs reference data; {model} ({dataset}) has none (known: "
                             f"{', '.join(REFERENCE_DATA)}); only speed applies")
        if name == "accuracy" and (dataset != "digits" or num_classes != 10):
            raise ValueError(f"metrics: accuracy needs a class-conditional digits model; {model} is {dataset}")
        if name == "modes" and not dataset.startswith("toy2d-"):
            raise ValueError(f"metrics: modes is for toy2d models; {model} is {dataset}")
        if name == "alignment" and not prompts:
            raise ValueError(f"metrics: alignment is for text-to-image models on prompts; {model} is {dataset}")


def check_extractor(extractor: str | None, dataset: str) -> str | None:
    """The extractor for `dataset` (its default when None); None for data without a reference."""
    data = REFERENCE_DATA.get(dataset)
    if data is None:
        return None
    if extractor is None:
        return data.extractors[0]
    if extractor not in data.extractors:
        raise ValueError(f"extractor: {extractor!r} does not apply to {dataset} (use: {', '.join(data.extractors)})")
    return extractor


def check_n(n: int, dataset: str, metrics) -> int:
    """n samples per model: within [MIN_N, MAX_N] and, for reference metrics, at most the reference's size."""
    if not isinstance(n, int) or isinstance(n, bool) or not MIN_N <= n <= MAX_N:
        raise ValueError(f"n: must be an integer in [{MIN_N}, {MAX_N}], got {n!r}")
    data = REFERENCE_DATA.get(dataset)
    needs_reference = any(name in REFERENCE_METRICS for name in check_metrics(metrics))
    if needs_reference and data is not None and data.size is not None and n > data.size:
        raise ValueError(f"n: {n} is larger than the {dataset} reference ({data.size} images)")
    return n


def reference_key(dataset: str, extractor: str, resolution: int, n: int) -> str:
    """The name of a reference's statistics: the file stem under DATA_DIR/reference/ and Evaluation.reference."""
    return f"{dataset}-{extractor}-{resolution}-{n}"


def reference_dataset(dataset: str, seed: int, n: int) -> str:
    """What a reference is drawn from: the dataset, and for a seeded one (a prompt set) the seeds too, so statistics of
    different seed ranges never share a key: shapes-test-seeds0-999."""
    return f"{dataset}-seeds{seed}-{seed + n - 1}" if REFERENCE_DATA[dataset].seeded else dataset


def guided_model(model: str, guidance: float) -> str:
    """The stored model key of a teacher sampled with classifier-free guidance w (w = 1: plain)."""
    return model if guidance == 1.0 else f"{model}+cfg{guidance:g}"


def is_small_sample(n: int) -> bool:
    """Whether an FID/KID over n samples is only a small-sample estimate (see SMALL_SAMPLE_N)."""
    return n < SMALL_SAMPLE_N
