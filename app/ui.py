"""The studio's web page (Gradio 6). For now one view: pick a teacher, class, seeds and steps; see samples.

Handlers are plain functions, then the layout, then the wiring (gradio's demo/ style). The page is built by
a function that receives its dependencies, so tests can build it against a temporary data dir.
"""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

from app.sampling import SamplerPool
from core.catalogue import get_teacher_info, list_teachers
from core.specs import SAMPLER_NAMES, SampleRequest, parse_seeds

UNCONDITIONAL = "any (unconditional)"


# -- Handlers ------------------------------------------------------------------------------------------------

def class_options(data_dir: Path, teacher: str) -> dict:
    """Choices for the Class field: the teacher's classes, or only 'unconditional'."""
    info = get_teacher_info(teacher, data_dir)
    if not info.num_classes:
        return {"choices": [UNCONDITIONAL], "value": UNCONDITIONAL, "interactive": False}
    return {"choices": [UNCONDITIONAL] + [str(c) for c in range(info.num_classes)], "value": "0", "interactive": True}


def build_request(data_dir: Path, teacher: str, class_choice: str, seeds_text: str, steps, guidance,
                  sampler: str, max_samples: int) -> SampleRequest:
    """Validate the form; every error names its field."""
    try:
        info = get_teacher_info(teacher, data_dir)
        seeds = parse_seeds(seeds_text, limit=max_samples)
        class_id = None if class_choice in (None, "", UNCONDITIONAL) else int(class_choice)
        if class_id is None and float(guidance) != 1.0:
            raise ValueError("guidance: pick a class to use guidance (w = 1 without one)")
        if class_id is not None and not info.num_classes:
            raise ValueError(f"class: teacher {teacher!r} is unconditional; choose '{UNCONDITIONAL}'")
        if class_id is not None and not 0 <= class_id < info.num_classes:
            raise ValueError(f"class: must be in [0, {info.num_classes - 1}]")
        if float(steps) != int(float(steps)):
            raise ValueError(f"steps: must be a whole number, got {steps}")
        return SampleRequest(model=f"teacher:{teacher}", seeds=seeds, steps=int(float(steps)), class_id=class_id,
                             guidance=float(guidance), sampler=sampler)
    except (TypeError, ValueError) as exc:
        raise gr.Error(str(exc)) from None


def generate(pool: SamplerPool, request: SampleRequest) -> tuple[list[tuple[str, str]], str, str]:
    summary = pool.sample(request)
    out = Path(summary["out_dir"])
    if (out / "grid.png").is_file():
        gallery = [(str(out / f"seed-{s:06d}.png"), f"seed {s}") for s in request.seeds]
    else:
        gallery = [(summary["grid"], f"{summary['n']} samples")]
    text = (f"**{summary['model']}** · {summary['sampler']} · {summary['steps']} steps · NFE {summary['nfe']} · "
            f"{summary['n']} samples · {summary['ms_per_sample']} ms/sample")
    return gallery, summary["grid"], text


# -- Layout and wiring ---------------------------------------------------------------------------------------

def build_studio(data_dir: Path, pool: SamplerPool, max_samples: int = 256) -> gr.Blocks:
    data_dir = Path(data_dir)
    teachers = [i.name for i in list_teachers(data_dir)]
    default = "digits" if "digits" in teachers else teachers[0]

    with gr.Blocks(title="Distill Studio") as demo:
        gr.Markdown("# Distill Studio\nSample a teacher at fixed seeds: the same seed always gets the same noise.")
        with gr.Row():
            with gr.Column(scale=1):
                teacher = gr.Dropdown(teachers, value=default, label="Teacher", elem_id="teacher")
                klass = gr.Dropdown(label="Class", elem_id="class", **class_options(data_dir, default))
                seeds = gr.Textbox("0-15", label="Seeds", elem_id="seeds",
                                   info=f"e.g. 0-15 or 3,7,42 (at most {max_samples})")
                steps = gr.Slider(1, 250, value=50, step=1, label="Steps", elem_id="steps")
                guidance = gr.Slider(0.0, 8.0, value=1.0, step=0.25, label="Guidance w", elem_id="guidance",
                                     info="x_u + w (x_c - x_u); 1 = plain conditional, needs a class")
                sampler = gr.Radio(list(SAMPLER_NAMES), value="ddim", label="Sampler", elem_id="sampler")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                summary = gr.Markdown(elem_id="summary")
                gallery = gr.Gallery(label="Samples", columns=8, height="auto", object_fit="contain",
                                     format="png", elem_id="gallery", buttons=["download", "fullscreen"])
                grid = gr.Image(label="Grid", type="filepath", format="png", elem_id="grid",
                                buttons=["download", "fullscreen"])

        teacher.change(lambda name: gr.Dropdown(**class_options(data_dir, name)), teacher, klass)

        def on_generate(name, class_choice, seeds_text, n_steps, w, sampler_name, progress=gr.Progress()):
            request = build_request(data_dir, name, class_choice, seeds_text, n_steps, w, sampler_name, max_samples)
            progress(0.1, desc=f"sampling {len(request.seeds)} images")
            try:
                return generate(pool, request)
            except (ValueError, FileNotFoundError) as exc:
                raise gr.Error(str(exc)) from None

        run.click(on_generate, [teacher, klass, seeds, steps, guidance, sampler], [gallery, grid, summary],
                  concurrency_limit=1, concurrency_id="sampler")
    return demo


def launch_kwargs(data_dir: Path) -> dict:
    """Offline and locked down: theme object, no share link, nothing served but generated samples."""
    return {
        "share": False, "theme": gr.themes.Default(), "footer_links": [], "enable_monitoring": False,
        "allowed_paths": [str(Path(data_dir) / "samples")],
        "blocked_paths": [str(Path(data_dir) / p) for p in ("teachers", "teacher-runs", "runs")],
        "max_file_size": "10mb", "mcp_server": False,
    }


def serve(settings, host: str, port: int, prevent_thread_lock: bool = False):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(settings.data_dir / "gradio-tmp"))
    pool = SamplerPool(settings.data_dir, settings.device)
    demo = build_studio(settings.data_dir, pool, settings.max_samples)
    demo.queue(default_concurrency_limit=None)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=prevent_thread_lock, quiet=False,
                **launch_kwargs(settings.data_dir))
    return demo, pool
