"""The blind rating page (docs/study.md#raters-and-vote-integrity): one pair at a time, two questions, keyboard
shortcuts, undo, progress.

The browser receives the study names, an opaque assignment token, two blind image files and the condition text;
never a caption, a model, run or variant name or id. Identity is `request.username`, never the Gradio session."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import gradio as gr
from fastapi import Request
from fastapi.responses import RedirectResponse

from app.rate.blind import blind_dir
from app.rate.keys import HEAD, KEYS_HELP, SUBMIT_JS
from app.studio.context import Studio
from app.studio.study_weights import maybe_refresh
from storage.artifacts import resolve
from storage.models import Study
from storage.vote_rows import answered_pairs
from storage.votes import (
    RatingError,
    Showing,
    next_assignment,
    open_studies,
    open_study,
    progress,
    rate_settings,
    record_votes,
    retrying,
    showing,
    undo_last,
)

CHOICES = [("Left", "left"), ("Right", "right"), ("Tie", "tie"), ("Both bad", "both_bad")]
QUESTIONS = {"quality": "Image quality: which image is better (fewer artifacts or distortions, coherent light and scale)?",
             "alignment": "Alignment: which image matches the class or prompt better?"}
IMAGE_HEIGHT = 380  # both boxes the same fixed height; each image is scaled to fill its box, never cropped
# Samples are tiny (a 16x16 digit): Gradio's `object-fit: scale-down` would draw one at 16 px in the middle of its box.
# Scale both up to fill their boxes instead, with nearest-neighbour pixels so that smoothing neither hides nor invents
# artifacts; the same in the fullscreen views (`F` makes the row fullscreen, the corner button one image).
CSS = """
#rate-images .image-frame { width: 100%; height: 100%; }
#rate-images img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
#rate-images:fullscreen { background: #000; padding: 8px; gap: 8px; align-items: stretch; }
#rate-images:fullscreen > .block { height: auto !important; max-height: none !important; }
#rate-images .image-container:fullscreen img { max-width: none; max-height: none; }
"""
GUIDE = ("Look at both images (enlarge them with `F` or the corner button), then answer both questions. "
         "Sides are random; judge each question on its own.")


def _app_version() -> str:
    try:
        return metadata.version("distill-studio")
    except metadata.PackageNotFoundError:
        return ""


APP_VERSION = _app_version()


# -- handlers ----------------------------------------------------------------------------------------------

def rater_name(ctx: Studio, request: gr.Request | None) -> str:
    """The signed-in rater; anything else is refused (the login already admits raters only)."""
    name = getattr(request, "username", None) if request is not None else None
    if not name or ctx.accounts.role(name) != "rater":
        raise PermissionError("sign in with a rater account")
    return name


@dataclass(frozen=True)
class State:
    """What one request learned in its one transaction: the pair to show (or why none), progress, the undo window."""

    shown: Showing | None
    done: int = 0
    quota: int = 0
    undo_s: float = 0.0
    message: str = ""  # why nothing is shown


def study_names(ctx: Studio) -> list[str]:
    """Names of the open studies, oldest first (names are the researchers' and say nothing about the variants)."""
    return retrying(ctx.factory, lambda s: open_studies(session=s))


def _open_study(session, study_name: str | None) -> Study | None:
    return open_study(session=session, name=study_name) if study_name else None


def _state(session, study: Study | None, rater: str, study_name: str | None) -> State:
    """The rater's current pair in `study` (its open assignment, else a new one), within the caller's transaction."""
    if study is None:
        return State(None, message="Pick a study above." if not study_name else "This study is closed. Pick another one.")
    assignment = next_assignment(session=session, study_id=study.id, rater=rater)
    shown = None if assignment is None else showing(session=session, assignment=assignment)
    done, quota = progress(session=session, study_id=study.id, rater=rater)
    return State(shown, done, quota, rate_settings(study).undo_s)


def current(ctx: Studio, study_name: str | None, rater: str) -> State:
    try:
        return retrying(ctx.factory, lambda s: _state(s, _open_study(s, study_name), rater, study_name))
    except RatingError as exc:
        return State(None, message=str(exc))


def render(ctx: Studio, state: State, note: str = "") -> tuple:
    """The values of the page's outputs for a state."""
    # Plain values where a value will do: Gradio rebuilds a component's whole config for every update it is sent.
    blank = (None, None, gr.update(interactive=False))
    counter = f"**{state.done} of {state.quota}**" if state.quota else ""
    if state.shown is None:
        if state.message:
            message = state.message
        elif state.done >= state.quota:
            message = f"All done: you answered {state.done} of {state.quota} pairs. Thank you!"
        else:
            message = f"No more pairs for you in this study ({state.done} answered). Thank you!"
        return ("", None, None, f"### {message}", *blank, counter, note, gr.update(visible=False))
    shown = state.shown
    prompt = f"### Which image is better?\n**{shown.condition_text}**"
    return (shown.token, _image(ctx, shown.left_image), _image(ctx, shown.right_image), prompt, *blank, counter, note,
            gr.update(visible=True))


def _image(ctx: Studio, stored: str) -> str:
    """The absolute blind file behind a stored path; only the blind directory is ever served."""
    path = resolve(ctx.data_dir, stored)
    if not path.is_relative_to(blind_dir(ctx.data_dir).resolve()):
        raise gr.Error("this pair's image is not a blind copy; tell the study's researcher")
    return str(path)


def submit(ctx: Studio, study_name: str | None, token: str, quality: str | None, alignment: str | None,
           client_ms: float | None, fullscreen: bool | None, request: gr.Request) -> tuple:
    """Record both answers, then show the next pair (one transaction)."""
    rater = rater_name(ctx, request)
    if client_ms is not None and client_ms < 0:
        return _note_only("Wait until both images have loaded.")
    if not (quality and alignment):
        return _note_only("Answer both questions first.")

    answered: dict[str, int] = {}

    def answer(session) -> State:
        votes = record_votes(session=session, token=token or "", rater=rater,
                             answers={"quality": quality, "alignment": alignment}, client_ms=client_ms,
                             session_hash=getattr(request, "session_hash", "") or "", fullscreen=bool(fullscreen),
                             slider=False, app_version=APP_VERSION)
        study = _open_study(session, study_name)
        if votes and study is not None:
            answered.update(study=study.id, pairs=answered_pairs(session=session, study_id=study.id))
        return _state(session, study, rater, study_name)

    try:
        state = retrying(ctx.factory, answer)
    except RatingError as exc:
        return render(ctx, current(ctx, study_name, rater), note=str(exc))
    if answered:  # every 50 answered pairs, re-weight the pool toward the widest intervals (a background thread)
        maybe_refresh(ctx.factory, answered["study"], answered["pairs"])
    return render(ctx, state, note=f"Saved. Press `U` within {state.undo_s:g} s to undo." if state.undo_s else "Saved.")


def undo(ctx: Studio, study_name: str | None, request: gr.Request) -> tuple:
    """Retract the last answers (within the undo window) and show that pair again."""
    rater = rater_name(ctx, request)

    def take_back(session) -> State:
        study = _open_study(session, study_name)
        if study is None:
            raise RatingError("pick a study first")
        undo_last(session=session, rater=rater, study_id=study.id)
        return _state(session, study, rater, study_name)

    try:
        state = retrying(ctx.factory, take_back)
    except RatingError as exc:
        return _note_only(f"Cannot undo: {exc}.")
    return render(ctx, state, note="Undone: answer this pair again.")


def _note_only(note: str) -> tuple:
    return (gr.update(),) * 8 + (note, gr.update())


def gate(quality: str | None, alignment: str | None):
    """Submit is enabled only once both questions are answered."""
    return gr.update(interactive=bool(quality and alignment))


def on_load(ctx: Studio, request: gr.Request) -> tuple:
    rater = rater_name(ctx, request)
    names = study_names(ctx)
    chosen = names[0] if len(names) == 1 else None
    picker = gr.Dropdown(choices=names, value=chosen, visible=len(names) != 1)
    who = f"Signed in as **{rater}** · [log out](/rate/logout)"
    if not names:
        return (picker, who, *render(ctx, State(None, message="No study is open for rating right now.")))
    return (picker, who, *render(ctx, current(ctx, chosen, rater)))


# -- layout and wiring -------------------------------------------------------------------------------------

def build_rate_page(ctx: Studio) -> gr.Blocks:
    with gr.Blocks(title="Rate images") as demo:
        gr.Markdown("# Rate images")
        who = gr.Markdown(elem_id="rate-who")
        # Custom values pass Gradio's check against the initial (empty) choices; the handlers accept open studies only.
        study = gr.Dropdown(label="Study", choices=[], value=None, elem_id="rate-study", interactive=True,
                            allow_custom_value=True)
        prompt = gr.Markdown(elem_id="rate-prompt")
        with gr.Column(visible=False) as pair_box:
            gr.Markdown(GUIDE)
            with gr.Row(equal_height=True, elem_id="rate-images"):
                left = gr.Image(label="Left image", type="filepath", interactive=False, height=IMAGE_HEIGHT,
                                buttons=["fullscreen"], elem_id="rate-left")
                right = gr.Image(label="Right image", type="filepath", interactive=False, height=IMAGE_HEIGHT,
                                 buttons=["fullscreen"], elem_id="rate-right")
            quality = gr.Radio(CHOICES, label=QUESTIONS["quality"], value=None, elem_id="rate-quality")
            alignment = gr.Radio(CHOICES, label=QUESTIONS["alignment"], value=None, elem_id="rate-alignment")
            with gr.Row():
                send = gr.Button("Submit", variant="primary", interactive=False, elem_id="rate-submit")
                back = gr.Button("Undo", elem_id="rate-undo")
            gr.Markdown(KEYS_HELP, elem_id="rate-keys")
        counter = gr.Markdown(elem_id="rate-progress")
        note = gr.Markdown(elem_id="rate-note")
        token = gr.Textbox(visible=False, elem_id="rate-token")
        client_ms = gr.Number(value=None, visible=False)
        fullscreen = gr.Checkbox(value=False, visible=False)
        outputs = [token, left, right, prompt, quality, alignment, send, counter, note, pair_box]

        # -- wiring: explicit api names so the HTTP tests and the benchmark can drive the page like a browser
        def load_page(request: gr.Request):
            return on_load(ctx, request)

        def pick(name, request: gr.Request):
            return render(ctx, current(ctx, name, rater_name(ctx, request)))

        def send_answers(name, tok, q, a, ms, fs, request: gr.Request):
            return submit(ctx, name, tok, q, a, ms, fs, request)

        def take_back(name, request: gr.Request):
            return undo(ctx, name, request)

        # Off the queue: each event is one POST answered with JSON (no queue join, no event stream), which keeps the
        # next pair's latency at the handler's database work. They touch no GPU and need no ordering: the database
        # serialises a rater's transactions (storage/votes._lock_rater).
        hidden = {"api_visibility": "undocumented", "queue": False}
        demo.load(load_page, None, [study, who, *outputs], api_name="rate_load", **hidden)
        study.input(pick, [study], outputs, api_name="rate_pick", **hidden)
        # .input: a rater's click, not the reset that comes with a new pair. One listener for both questions, so its
        # replies apply in order: with one listener each, "1" then "Q" sent two requests whose replies could cross,
        # leaving Submit disabled after both were answered.
        gr.on([quality.input, alignment.input], gate, [quality, alignment], send, queue=False,
              trigger_mode="always_last", show_progress="hidden", api_visibility="private")
        send.click(send_answers, [study, token, quality, alignment, client_ms, fullscreen], outputs, js=SUBMIT_JS,
                   api_name="rate_submit", show_progress="hidden", **hidden)
        back.click(take_back, [study], outputs, api_name="rate_undo", show_progress="hidden", **hidden)
    return demo


def to_page(request: Request) -> RedirectResponse:
    """/rate, the address raters are given and where Gradio's logout sends them, to the page itself at /rate/."""
    query = request.url.query
    return RedirectResponse("/rate/" + (f"?{query}" if query else ""))


def mount_rate_page(app, ctx: Studio, studio_kwargs: dict):
    """Mount the page at /rate for rater accounts: its only allowed path is the blind directory, no run history."""
    data_dir = Path(ctx.data_dir)
    blind_dir(data_dir).mkdir(parents=True, exist_ok=True)
    # Served in place: otherwise every reply hashes and copies both images into Gradio's cache (about a tenth of the
    # server's time per vote, measured with py-spy under 20 raters). The folder holds only blind copies (uuid names,
    # pixels only); static paths are process-wide, so signed-in researchers could fetch them from the studio too,
    # which reveals nothing to them.
    gr.set_static_paths([blind_dir(data_dir)])
    demo = build_rate_page(ctx)
    # The mount answers /rate/... only; without this route the studio mounted at / would answer /rate with a 404.
    app.add_api_route("/rate", to_page, methods=["GET", "HEAD"], include_in_schema=False)
    kwargs = {**studio_kwargs, "allowed_paths": [str(blind_dir(data_dir))], "run_history": False, "footer_links": [],
              "head": HEAD, "css": CSS}
    # root_path: off-queue replies build file URLs from it, and without it they would drop the /rate prefix.
    return gr.mount_gradio_app(app, demo, path="/rate", root_path="/rate", auth=ctx.accounts.checker("rater"),
                               auth_message="Rating: rater sign-in.", **kwargs)
