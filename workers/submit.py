"""Queue jobs: validate a spec, write the run row, send its task (docs/architecture.md#jobs). Torch-free: the web app imports it.

Nothing is written before the spec has passed every check a worker would make, so bad input never leaves a row.
The row is committed before its message is sent; a message lost after that (broker down, worker dead) is re-sent
by a worker's reaper, and a duplicate is harmless because workers claim runs by compare-and-set.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.orm import Session, sessionmaker

from core import eval_prompts, eval_specs
from core.catalogue import check_distillable, check_prompts_fit, check_trainable, get_teacher_info, recipe_batch_size
from core.export_checks import check_exportable, teacher_folder
from core.knobs import knob
from core.method_specs import METHOD_CONFIGS, build_method_config, check_teacher_data
from core.refs import ModelRef, default_steps, parse_ref
from core.run_files import check_init
from core.specs import SAMPLER_NAMES, SampleRequest, teacher_training_steps
from core.text_inputs import check_text_inputs
from storage import repo
from storage.artifacts import resolve
from storage.db import check_connection, make_engine, make_session_factory, session_scope
from storage.settings import Settings, get_settings


class _Spec(BaseModel):
    """A job's spec: fields declared with core.knobs.knob (description, provenance, bounds) like the method configs,
    read leniently from JSON; a refused value is reported by pydantic's own text after the field's dotted path."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Seed = Annotated[int, Field(ge=0, lt=2**63)]
MAX_SAMPLE_PROMPTS = 64  # why: a sample job feeds one grid page (64 cells) or one study's prompts


class TeacherSpec(_Spec):
    """Train a built-in teacher."""

    name: str = knob(..., "choice", "a trainable built-in teacher (distill-studio teachers list)")
    iterations: int | None = knob(None, "choice", "training steps; none: the teacher's shipped recipe", ge=1,
                                  le=10_000_000)
    seed: int | None = knob(None, "choice", "none: the recipe's seed", ge=0)


class DistillSpec(_Spec):
    """Distil a teacher into a student; the same fields as `distill-studio distill`."""

    teacher: str = knob(..., "choice", "a distillable teacher: a network, built in or imported")
    method: str = knob(..., "choice", f"one of {', '.join(METHOD_CONFIGS)}")
    preset: str = knob("default", "choice", "a preset of the method, or several joined with +")
    student_steps: int | None = knob(None, "choice", "none: the preset's", ge=1, le=1000)
    sets: tuple[str, ...] = knob((), "choice", "KEY=VALUE overrides of the method's knobs (distill --help-knobs)")
    iterations: int = knob(2000, "choice", "enough for the toy benchmarks' students on a CPU", ge=1, le=10_000_000)
    batch_size: int | None = knob(None, "choice", "none: the teacher's recipe batch", ge=1, le=65536)
    grad_accum: int = knob(1, "choice", "micro-batches per optimizer step (batch_size / grad_accum examples in memory "
                           "at once)", ge=1, le=4096)
    seed: int = knob(0, "choice", "every run is reproducible", ge=0)
    checkpoint_every: int | None = knob(None, "choice", "none: a quarter of the run, at most 500 steps", ge=1)
    prompts: str | None = knob(None, "choice", "text-to-image teachers: a prompt file's absolute path (data-free methods)",
                               max_length=4096)
    data: str | None = knob(None, "choice", "text-to-image teachers: an image folder's absolute path (metadata.jsonl "
                            "with file_name and text), for the methods that train on images", max_length=4096)
    init: str | None = knob(None, "choice", "run:ID or a run folder's absolute path: start from its latest training "
                            "checkpoint (same teacher and method), e.g. DMD2's SD 1.5 second stage", max_length=4096)


class SampleSpec(_Spec):
    """Sample a teacher (teacher:NAME) or a distill run (run:ID) at fixed seeds: its final model once it has
    succeeded, or with `checkpoint` the weights of one of its recorded checkpoint steps (a running run's too)."""

    model: str = knob(..., "choice", "teacher:NAME or run:ID")
    seeds: tuple[Seed, ...] = knob(..., "choice", "one image per seed; seed i's noise never depends on the batch",
                                   min_length=1, max_length=100_000)
    steps: int | None = knob(None, "choice", "none: a teacher's 50, a student's own", ge=1, le=1000)
    class_id: int | None = knob(None, "choice", "class-conditional teachers only", ge=0)
    guidance: float = knob(1.0, "choice", "CFG weight, teacher only", ge=0.0, le=20.0)
    sampler: Literal[SAMPLER_NAMES] = knob("ddim", "choice", "the teacher's sampler")  # type: ignore[valid-type]
    eta: float = knob(0.0, "choice", "DDIM's stochasticity (0: deterministic)", ge=0.0, le=1.0)
    checkpoint: int | None = knob(None, "choice", "run:ID only: a recorded training step (repo.checkpoint_steps)",
                                  ge=0)
    prompts: tuple[str, ...] = knob((), "choice", "text-to-image models only: each prompt is drawn at every seed",
                                    max_length=MAX_SAMPLE_PROMPTS)


class EvaluateSpec(_Spec):
    """Measure models at fixed seeds: the same fields as `distill-studio evaluate` (REF syntax: core/refs.py)."""

    models: tuple[str, ...] = knob(..., "choice", "model references", min_length=1, max_length=64)
    metrics: tuple[str, ...] = knob(..., "choice", f"of {', '.join(eval_specs.METRICS)}", min_length=1,
                                    max_length=32)
    n: int = knob(1000, "choice", "samples per model; below 2,000 figures are small-sample estimates",
                  ge=eval_specs.MIN_N, le=eval_specs.MAX_N)
    seed: int = knob(0, "choice", "seeds seed .. seed + n - 1; class-conditional: class seed % 10", ge=0, lt=2**62)
    extractor: str | None = knob(None, "choice", "none: the dataset's own (digits, toy2d, shapes)")
    guidance: float = knob(1.0, "choice", "CFG weight for class-conditional and text-to-image teachers", ge=0.0,
                           le=20.0)
    prompts: str | None = knob(None, "choice", "text-to-image models only: a built-in prompt set (shapes-test, "
                               "shapes-heldout; none: the shapes teacher's shapes-test) or a prompt file's absolute "
                               "path; seed s draws prompt s", max_length=4096)


class ExportSpec(_Spec):
    """Write a distill run's student as a diffusers pipeline folder, as `distill-studio export run:ID` does, into the
    export run's own folder (DATA_DIR/runs/ID/pipeline)."""

    model: str = knob(..., "choice", "run:ID of a distill run")
    step: int | None = knob(None, "choice", "a recorded checkpoint step; none: the final model", ge=0)


SPECS: dict[str, type[_Spec]] = {"teacher": TeacherSpec, "distill": DistillSpec, "sample": SampleSpec,
                                 "evaluate": EvaluateSpec, "export": ExportSpec}


def _parse(kind: str, spec: dict[str, Any]) -> _Spec:
    if kind not in SPECS:
        raise ValueError(f"kind: must be one of {', '.join(SPECS)}, got {kind!r}")
    if not isinstance(spec, dict):
        raise ValueError(f"spec: must be a JSON object, got {type(spec).__name__}")
    try:
        return SPECS[kind].model_validate(spec)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(part) for part in err["loc"]) or "spec"
        raise ValueError(f"{field}: {err['msg'].removeprefix('Value error, ')}") from None


def validate_spec(kind: str, spec: dict[str, Any], *, data_dir: Path, session: Session | None = None) -> dict[str, Any]:
    """The normalised spec (defaults filled in) or ValueError naming the field: every check a worker would make."""
    parsed = _parse(kind, spec)
    if isinstance(parsed, TeacherSpec):
        check_trainable(parsed.name, field="name")
    elif isinstance(parsed, DistillSpec):
        info = check_distillable(parsed.teacher, data_dir)
        config = build_method_config(parsed.method, preset=parsed.preset, student_steps=parsed.student_steps,
                                     sets=parsed.sets)
        for field in ("prompts", "data"):
            value = getattr(parsed, field)
            if value is not None and not Path(value).is_absolute():
                raise ValueError(f"{field}: must be an absolute path (the worker may run in another folder), got "
                                 f"{value!r}")
        text = check_text_inputs(info, config.needs_data, parsed.method, parsed.prompts, parsed.data)
        if text is None:
            check_teacher_data(config, parsed.teacher, has_data=info.benchmark != "imported")
        batch = parsed.batch_size or recipe_batch_size(info, text)
        if batch % parsed.grad_accum:
            raise ValueError(f"grad_accum: must divide the batch ({batch}) into equal micro-batches, "
                             f"got {parsed.grad_accum}")
        if parsed.init is not None:
            folder = init_folder(parsed.init, data_dir, session)
            check_init(folder, parsed.teacher, parsed.method)
            parsed = parsed.model_copy(update={"init": str(folder)})  # the worker reads a folder, never the database
        if parsed.checkpoint_every is not None and parsed.checkpoint_every > parsed.iterations:
            raise ValueError(f"checkpoint_every: must be at most iterations ({parsed.iterations}), "
                             f"got {parsed.checkpoint_every}")
    elif isinstance(parsed, EvaluateSpec):
        return check_evaluate(spec, data_dir=data_dir, session=session)[0]
    elif isinstance(parsed, ExportSpec):
        _check_export(parsed, data_dir, session)
    else:
        _check_sample(parsed, data_dir, session)
    return parsed.model_dump(mode="json")


def _distill_run(session: Session | None, run_id: int, field: str):
    """The distill run `run_id` a reference names; ValueError naming `field` without a database or for another run."""
    if session is None:
        raise ValueError(f"{field}: run references need the database")
    run = repo.get_run(session=session, run_id=run_id)
    if run is None or run.kind != "distill":
        raise ValueError(f"{field}: run {run_id} is not a distill run")
    return run


def init_ref(value: str) -> ModelRef:
    """`--init` parsed: run:ID or a run folder (no teacher, no step count); ValueError naming `init` otherwise."""
    try:
        ref = parse_ref(value)
    except ValueError as exc:
        raise ValueError(f"init: {str(exc).removeprefix('model: ')}") from None
    if ref.is_teacher or ref.steps is not None:
        raise ValueError(f"init: {value!r} is not run:ID or a run folder")
    return ref


def init_folder(value: str, data_dir: Path, session: Session | None) -> Path:
    """The run folder `--init` names: run:ID (its artifacts folder) or an absolute folder path."""
    ref = init_ref(value)
    if ref.kind == "run":
        return resolve(data_dir, _distill_run(session, ref.run_id, "init").out_dir)
    if not ref.path.is_absolute():
        raise ValueError(f"init: must be run:ID or an absolute path (the worker may run in another folder), got {value!r}")
    return ref.path


def _check_sample(spec: SampleSpec, data_dir: Path, session: Session | None) -> None:
    ref = _sample_ref(spec.model)
    if ref.is_teacher:
        info = check_prompts_fit(_teacher_info(ref.name, data_dir), spec.prompts)
    else:
        run = _distill_run(session, ref.run_id, "model")
        if spec.checkpoint is None and run.status != "succeeded":
            raise ValueError(f"model: run {ref.run_id} has not succeeded (status {run.status})")
        if spec.checkpoint is not None:
            _check_checkpoint(run, spec.checkpoint, data_dir, session)
        info = check_prompts_fit(get_teacher_info(run.spec["teacher"], data_dir), spec.prompts)
        if spec.guidance != 1.0:
            raise ValueError("guidance: students are sampled unguided (guidance belongs to the teacher)")
    if spec.checkpoint is not None and ref.is_teacher:
        raise ValueError("checkpoint: only run:ID models have checkpoints; a teacher is sampled as it is")
    SampleRequest(model=spec.model, seeds=spec.seeds, steps=spec.steps or 1, class_id=spec.class_id,
                  guidance=spec.guidance, sampler=spec.sampler, eta=spec.eta, prompts=spec.prompts)
    if spec.class_id is not None and not (info.num_classes and spec.class_id < info.num_classes):
        limit = f"must be in [0, {info.num_classes - 1}]" if info.num_classes else "must be left out (unconditional)"
        raise ValueError(f"class_id: {limit} for {info.name!r}, got {spec.class_id}")


def _check_export(spec: ExportSpec, data_dir: Path, session: Session | None) -> None:
    """A distill run that has the weights asked for, of a teacher whose students export (core.export_checks)."""
    ref = _sample_ref(spec.model)
    if ref.is_teacher:
        raise ValueError(f"model: {spec.model!r} is a teacher; export takes a student: run:ID")
    run = _distill_run(session, ref.run_id, "model")
    if spec.step is None and run.status != "succeeded":
        raise ValueError(f"model: run {ref.run_id} has not succeeded (status {run.status}); export one of its "
                         "checkpoints with step")
    if spec.step is not None:
        _check_checkpoint(run, spec.step, data_dir, session)
    student = resolve(data_dir, run.out_dir) / "student.json"
    if not student.is_file():
        raise ValueError(f"model: run {ref.run_id} has no student.json (its folder {student.parent} was moved?)")
    recorded = json.loads(student.read_text())
    check_exportable(recorded, teacher_folder(recorded["teacher"], data_dir))


def _sample_ref(model: str) -> ModelRef:
    """A sample job's model: a bare teacher:NAME or run:ID (its images are stored under that key, the step count
    in their own column)."""
    try:
        ref = parse_ref(model)
    except ValueError:
        ref = None
    if ref is None or ref.kind == "folder" or ref.steps is not None:
        raise ValueError(f"model: {model!r} is not teacher:NAME or run:ID")
    return ref


def _teacher_info(name: str, data_dir: Path):
    try:
        return get_teacher_info(name, data_dir)
    except ValueError as exc:  # name the field the user gave: model, not teacher
        raise ValueError(f"model: {str(exc).removeprefix('teacher: ')}") from None


def _check_checkpoint(run, step: int, data_dir: Path, session: Session) -> None:
    """The step must be a recorded checkpoint of the run (or its final step once succeeded) with its weights on disk:
    the snapshot core.train exports at every checkpoint, or the final model."""
    steps = repo.checkpoint_steps(session=session, run_id=run.id)
    saved = ", ".join(map(str, steps)) or "none yet"
    if step not in steps:
        raise ValueError(f"checkpoint: run {run.id} has no checkpoint at step {step}; saved: {saved}")
    folder = resolve(data_dir, run.out_dir)
    snapshot = folder / "snapshots" / f"step-{step:07d}.safetensors"  # core.train.snapshot_path, without torch
    final = folder / "model.safetensors"
    if not snapshot.is_file() and not (run.status == "succeeded" and step == max(steps) and final.is_file()):
        raise ValueError(f"checkpoint: run {run.id} has no snapshot at step {step} (its weights were not kept); "
                         f"saved: {saved}")


@dataclass(frozen=True)
class EvalTarget:
    """One model of an evaluation, resolved: what to load, at how many steps, and the data it models."""

    ref: str            # the REF in canonical form (a folder as an absolute path)
    model: str          # the key its Evaluation rows carry: teacher:NAME[+cfgW], run:ID or the folder path
    kind: str           # "teacher" or "student"
    source: str         # the teacher's name, or the student folder
    steps: int
    dataset: str        # what its samples are compared with: the teacher's benchmark (digits, toy2d-ring, toy2d-grid,
                        # shapes, imported), or the built-in prompt set a text-to-image model is evaluated on
    num_classes: int
    extractor: str | None  # None: no reference data for this dataset
    prompts: eval_prompts.EvalPrompts | None = None  # text-to-image models: the prompts seeds draw


def check_evaluate(spec: dict[str, Any], *, data_dir: Path, session: Session | None) -> tuple[dict[str, Any], list[EvalTarget]]:
    """(normalised spec, resolved targets) of an evaluate spec, or ValueError naming the field."""
    spec = _parse("evaluate", spec).model_dump(mode="json")
    metrics = eval_specs.check_metrics(spec["metrics"])
    targets = []
    for ref in spec["models"]:
        target = _eval_target(ref, spec["guidance"], spec["prompts"], data_dir, session)
        eval_specs.check_applicable(metrics, model=target.ref, dataset=target.dataset, num_classes=target.num_classes,
                                    prompts=target.prompts.name if target.prompts else "")
        eval_specs.check_n(spec["n"], target.dataset, metrics)
        if target.prompts is not None:
            eval_prompts.check_seeds(target.prompts, spec["seed"], spec["n"])
            if "alignment" in metrics:
                eval_prompts.check_grammar(target.prompts)
        targets.append(dataclasses.replace(target, extractor=eval_specs.check_extractor(spec["extractor"], target.dataset)))
    if spec["extractor"] is not None and all(t.extractor is None for t in targets):
        raise ValueError(f"extractor: no model here has reference data for {spec['extractor']!r}")
    return {**spec, "models": [t.ref for t in targets], "metrics": list(metrics)}, targets


def _eval_target(ref: str, guidance: float, prompts: str | None, data_dir: Path,
                 session: Session | None) -> EvalTarget:
    parsed = parse_ref(ref)
    if parsed.is_teacher:
        info = _teacher_info(parsed.name, data_dir)
        if guidance != 1.0 and not (info.num_classes or info.is_text_to_image):
            raise ValueError(f"guidance: {parsed.name!r} is unconditional; guidance needs a class-conditional or "
                             "text-to-image teacher")
        target = EvalTarget(ref, eval_specs.guided_model(parsed.at(None).text, guidance), "teacher", parsed.name,
                            default_steps(parsed), info.benchmark, info.num_classes, None)
        return _with_prompts(target, prompts, info)
    if guidance != 1.0:
        raise ValueError(f"guidance: students are sampled unguided (guidance belongs to the teacher); {ref!r} is one")
    if parsed.kind == "run":
        run = _distill_run(session, parsed.run_id, "model")
        if run.status != "succeeded":
            raise ValueError(f"model: run {parsed.run_id} has not succeeded (status {run.status})")
        folder, model = resolve(data_dir, run.out_dir), ModelRef.run(run.id).text
    else:
        folder = parsed.path.expanduser().resolve()
        model = str(folder)
        if len(model) > 255:
            raise ValueError(f"model: the folder path {model!r} is longer than 255 characters")
    if not (folder / "model.safetensors").is_file() or not (folder / "student.json").is_file():
        raise ValueError(f"model: {ref!r} is neither teacher:NAME[@STEPS], run:ID nor a finished student folder "
                         f"({folder} has no model.safetensors and student.json)")
    student = json.loads((folder / "student.json").read_text())
    steps = default_steps(parsed, student)
    config = METHOD_CONFIGS.get(student["method"])
    if config is not None and not config.supports_steps(steps):
        raise ValueError(f"model: {ref!r} is a one-step {student['method']} generator; evaluate it at @1")
    info = get_teacher_info(student["teacher"], data_dir)
    canonical = ref if parsed.kind == "run" else ModelRef.folder(model, parsed.steps).text
    return _with_prompts(EvalTarget(canonical, model, "student", str(folder), steps, info.benchmark, info.num_classes,
                                    None), prompts, info)


def _with_prompts(target: EvalTarget, prompts: str | None, info) -> EvalTarget:
    """The target with the prompts it draws if its teacher (`info`) is text-to-image; a built-in set's scenes are then
    what its samples are compared with."""
    resolved = eval_prompts.resolve_prompts(prompts, target.ref, info)
    if resolved is None:
        return target
    return dataclasses.replace(target, dataset=resolved.name if resolved.builtin else target.dataset, prompts=resolved)


def _total(kind: str, spec: dict[str, Any]) -> int | None:
    if kind == "evaluate":
        return len(spec["models"]) * spec["n"]
    if kind == "distill":
        return spec["iterations"]
    if kind == "sample":
        return len(spec["seeds"]) * max(1, len(spec.get("prompts") or ()))
    if kind == "export":
        return 1
    return teacher_training_steps(spec["name"], spec.get("iterations"))


class Jobs:
    """Submit, cancel and resume runs against one database and broker."""

    def __init__(self, settings: Settings | None = None, factory: sessionmaker[Session] | None = None):
        self.settings = settings or get_settings()
        if factory is None:
            engine = make_engine(self.settings.database_url)
            check_connection(engine)
            factory = make_session_factory(engine)
        self.factory = factory

    def validate(self, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        """The normalised spec, or ValueError naming the field; nothing is written (for a form that queues several
        jobs and must refuse them all before the first is queued)."""
        with session_scope(self.factory) as session:
            return validate_spec(kind, spec, data_dir=self.settings.data_dir, session=session)

    def submit(self, kind: str, spec: dict[str, Any]) -> int:
        """Validate, write the queued run and send its task; returns the run id."""
        with session_scope(self.factory) as session:
            clean = validate_spec(kind, spec, data_dir=self.settings.data_dir, session=session)
            run_id = repo.create_run(session=session, kind=kind, spec=clean, total=_total(kind, clean)).id
        self.send(run_id, kind)
        return run_id

    def send(self, run_id: int, kind: str) -> None:
        """Send the run's task message and note when; BrokerUnavailable if the broker cannot be reached (the run stays
        queued and a worker's reaper sends it once the broker is back)."""
        from workers.celery_app import TASK_NAMES, get_app

        app = get_app()
        try:
            with app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=2, interval_start=0.2, interval_step=0.5, timeout=5)
                app.send_task(TASK_NAMES[kind], args=[run_id], queue=self.settings.queue, connection=connection)
        except Exception as exc:  # kombu raises a different class per transport
            raise BrokerUnavailable(f"run {run_id} is queued, but the broker is unreachable ({_one_line(exc)}); "
                                    "a worker will send it when the broker is back") from None
        with session_scope(self.factory) as session:
            repo.mark_dispatched(session=session, run_id=run_id)

    def cancel(self, run_id: int) -> str:
        """Cancel a queued run at once or ask a running one's worker to stop; the run's status after the request."""
        with session_scope(self.factory) as session:
            run = self._get(session, run_id)
            if not repo.request_cancel(session=session, run_id=run_id):
                raise ValueError(f"run: {run_id} is {run.status}; only queued or running runs can be cancelled")
            return repo.get_run(session=session, run_id=run_id).status

    def resume(self, run_id: int) -> None:
        """Queue a cancelled or failed run again; its worker continues from the latest checkpoint."""
        with session_scope(self.factory) as session:
            run = self._get(session, run_id)
            if not repo.resume_run(session=session, run_id=run_id):
                raise ValueError(f"run: {run_id} is {run.status}; only cancelled or failed runs can be resumed")
            kind = run.kind
        self.send(run_id, kind)

    @staticmethod
    def _get(session: Session, run_id: int):
        run = repo.get_run(session=session, run_id=run_id)
        if run is None:
            raise ValueError(f"run: no run with id {run_id}")
        return run


class BrokerUnavailable(RuntimeError):
    """The run row exists, but its message could not be sent."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
