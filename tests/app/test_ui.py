"""The studio page: form validation names its field, and a real Gradio server on 127.0.0.1 samples teachers
(the analytic ring and an imported tiny pipeline) through its API."""

from __future__ import annotations

import socket
from pathlib import Path

import gradio as gr
import httpx
import pytest
from PIL import Image

from app.sampling import SamplerPool
from app.ui import UNCONDITIONAL, build_request, build_studio, class_options, launch_kwargs
from core.specs import SampleRequest

# -- Form validation ---------------------------------------------------------------------------------------

def test_build_request_accepts_good_input(tmp_path):
    req = build_request(tmp_path, "toy2d-ring-gmm", UNCONDITIONAL, "0-3, 9", 10, 1.0, "ddim", 256)
    assert req == SampleRequest(model="teacher:toy2d-ring-gmm", seeds=(0, 1, 2, 3, 9), steps=10, class_id=None,
                                guidance=1.0, sampler="ddim")
    # Gradio sliders deliver floats; the class dropdown a string.
    req = build_request(tmp_path, "digits", "7", "5", 25.0, 2.5, "ancestral", 256)
    assert req == SampleRequest(model="teacher:digits", seeds=(5,), steps=25, class_id=7, guidance=2.5,
                                sampler="ancestral")
    assert isinstance(req.steps, int)


@pytest.mark.parametrize("teacher, klass, seeds, steps, guidance, sampler, field", [
    ("toy2d-ring-gmm", UNCONDITIONAL, "abc", 10, 1.0, "ddim", "seeds"),
    ("toy2d-ring-gmm", UNCONDITIONAL, "", 10, 1.0, "ddim", "seeds"),
    ("toy2d-ring-gmm", UNCONDITIONAL, "5-2", 10, 1.0, "ddim", "seeds"),
    ("toy2d-ring-gmm", UNCONDITIONAL, "0-300", 10, 1.0, "ddim", "seeds"),      # over max_samples=256
    ("toy2d-ring-gmm", UNCONDITIONAL, "0-3", 10, 2.0, "ddim", "guidance"),     # guidance without a class
    ("digits", "10", "0-3", 10, 1.0, "ddim", "class"),                        # only 0..9
    ("toy2d-ring-gmm", UNCONDITIONAL, "0-3", 0, 1.0, "ddim", "steps"),
    ("toy2d-ring-gmm", UNCONDITIONAL, "0-3", 10, 1.0, "euler", "sampler"),
    ("nope", UNCONDITIONAL, "0-3", 10, 1.0, "ddim", "teacher"),
])
def test_build_request_errors_name_the_field(tmp_path, teacher, klass, seeds, steps, guidance, sampler, field):
    with pytest.raises(gr.Error) as info:
        build_request(tmp_path, teacher, klass, seeds, steps, guidance, sampler, 256)
    assert info.value.message.startswith(f"{field}:"), info.value.message


def test_class_options(tmp_path):
    assert class_options(tmp_path, "toy2d-ring-gmm") == {"choices": [UNCONDITIONAL], "value": UNCONDITIONAL,
                                                         "interactive": False}
    opts = class_options(tmp_path, "digits")
    assert opts["choices"] == [UNCONDITIONAL] + [str(c) for c in range(10)] and opts["interactive"]


# -- A real server -----------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from core.teachers.imported import import_folder
    from tests.tiny_pipelines import save_tiny_ddpm

    root = tmp_path_factory.mktemp("studio")
    data_dir = root / "data"
    import_folder(save_tiny_ddpm(root / "pipe"), "tiny", data_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(root / "gradio-tmp"))
        pool = SamplerPool(data_dir)
        demo = build_studio(data_dir, pool)
        try:
            demo.queue(default_concurrency_limit=None)
            port = _free_port()
            demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                        **launch_kwargs(data_dir))
            url = f"http://127.0.0.1:{port}/"
            from gradio_client import Client
            client = Client(url, verbose=False, analytics_enabled=False, download_files=str(root / "downloads"))
            yield {"url": url, "client": client, "data_dir": data_dir}
        finally:
            demo.close()
            pool.close()


def test_generate_ring_through_the_api(server):
    gallery, grid, summary = server["client"].predict(
        "toy2d-ring-gmm", UNCONDITIONAL, "0-63", 10, 1.0, "ddim", api_name="/on_generate")
    assert "NFE 10" in summary and "64 samples" in summary and "teacher:toy2d-ring-gmm" in summary
    with Image.open(grid) as img:
        assert img.format == "PNG" and min(img.size) > 64
    assert len(gallery) == 1  # 2-D data: the scatter plot is the gallery
    # The request was computed once and cached on disk under DATA_DIR/samples/<key>/.
    cached = list((server["data_dir"] / "samples").glob("*/scatter.png"))
    assert len(cached) == 1


def test_generate_rejects_bad_seeds_naming_the_field(server):
    with pytest.raises(Exception, match="seeds") as info:
        server["client"].predict("toy2d-ring-gmm", UNCONDITIONAL, "abc", 10, 1.0, "ddim", api_name="/on_generate")
    assert "cannot read 'abc'" in str(info.value)


def test_generate_imported_teacher_gallery_has_one_image_per_seed(server):
    gallery, grid, summary = server["client"].predict(
        "tiny", UNCONDITIONAL, "0-2", 4, 1.0, "ddim", api_name="/on_generate")
    assert "NFE 4" in summary and "3 samples" in summary
    assert [item["caption"] for item in gallery] == ["seed 0", "seed 1", "seed 2"]
    for item in gallery:
        with Image.open(item["image"]) as img:
            assert (img.size, img.mode) == ((8, 8), "RGB")
    assert Path(grid).is_file()


def test_page_shows_the_form_labels(server):
    html = httpx.get(server["url"], timeout=30).text
    for label in ("Teacher", "Seeds", "Steps", "Guidance w", "Sampler", "Generate"):
        assert label in html, label


def test_samples_are_served_but_teacher_weights_are_not(server):
    _, grid, _ = server["client"].predict("toy2d-ring-gmm", UNCONDITIONAL, "0-63", 10, 1.0, "ddim",
                                          api_name="/on_generate")  # cached after the first test
    sample_png = next((server["data_dir"] / "samples").glob("*/scatter.png"))
    served = httpx.get(f"{server['url']}gradio_api/file={sample_png}", timeout=30)
    assert served.status_code == 200 and served.content == sample_png.read_bytes()

    # Imported weights live in DATA_DIR/teachers, next to the samples, and must not be downloadable.
    weights = server["data_dir"] / "teachers" / "tiny" / "unet" / "diffusion_pytorch_model.safetensors"
    assert weights.is_file()
    response = httpx.get(f"{server['url']}gradio_api/file={weights}", timeout=30)
    assert response.status_code in (403, 404)
