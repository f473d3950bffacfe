"""The rating page's keyboard and timing script, passed as `head=` to mount_gradio_app (docs/study.md#raters-and-vote-integrity).

Keys click the page's own elements by elem_id, so a key does exactly what the click does: 1 2 3 4 answer quality
(left, right, tie, both bad), Q W E R answer alignment, Enter submits, U undoes, F toggles fullscreen. Keys are ignored
while a text field (the study picker) has focus or with a modifier held. The script also times the vote: milliseconds
from both images loaded to Submit, and whether fullscreen was used, handed to the submit event by `SUBMIT_JS`; and it
keeps the log-out link in its tab."""

from __future__ import annotations

KEYS_HELP = ("**Keys:** `1` `2` `3` `4` image quality (left, right, tie, both bad) · `Q` `W` `E` `R` alignment "
             "· `Enter` submit · `U` undo · `F` fullscreen")

HEAD = """
<script>
(() => {
  const rate = window.__rate = {loaded: {}, fullscreen: false};
  const QUESTIONS = {quality: "1234", alignment: "qwer"};
  const srcOf = (img) => img.currentSrc || img.src;
  document.addEventListener("load", (e) => {
    const img = e.target;
    if (img.tagName === "IMG" && img.closest("#rate-left, #rate-right")) rate.loaded[srcOf(img)] = performance.now();
  }, true);
  document.addEventListener("fullscreenchange", () => { if (document.fullscreenElement) rate.fullscreen = true; });
  // The corner button enlarges its image with CSS (Gradio's "fullscreen" class), not the Fullscreen API, so no
  // fullscreenchange comes from it; it is the images' only icon button (buttons=["fullscreen"]).
  document.addEventListener("click", (e) => {
    if (e.target.closest?.("#rate-left .icon-button, #rate-right .icon-button")) rate.fullscreen = true;
  }, true);
  // Gradio's Markdown opens every link in a new tab; logging out there would leave this tab looking signed in.
  document.addEventListener("click", (e) => {
    const link = e.target.closest?.("#rate-who a[href$='/logout']");
    if (link) { e.preventDefault(); window.location.assign(link.href); }
  }, true);
  const enlarged = () => Boolean(document.fullscreenElement
    || document.querySelector("#rate-left.fullscreen, #rate-right.fullscreen"));

  // [ms from both images loaded to now, fullscreen used]; ms is -1 while an image is still loading, null if unknown.
  window.rateClientValues = () => {
    const imgs = ["#rate-left img", "#rate-right img"].map((s) => document.querySelector(s));
    if (imgs.some((img) => !img || !img.complete || img.naturalWidth === 0)) return [-1, rate.fullscreen];
    const times = imgs.map((img) => rate.loaded[srcOf(img)]);
    const ms = times.some((t) => t === undefined) ? null : Math.round(performance.now() - Math.max(...times));
    const fullscreen = rate.fullscreen;
    rate.loaded = {};
    rate.fullscreen = enlarged();  // the next pair opens in the same view
    return [ms, fullscreen];
  };

  const typing = (el) => el && (el.isContentEditable || el.tagName === "TEXTAREA" || el.tagName === "SELECT"
    || (el.tagName === "INPUT" && !["radio", "checkbox", "button", "submit"].includes(el.type)));
  const click = (selector) => {
    const el = document.querySelector(selector);
    if (el && !el.disabled) el.click();
  };
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat || typing(e.target)) return;
    const key = e.key.toLowerCase();
    for (const [question, keys] of Object.entries(QUESTIONS)) {
      const i = keys.indexOf(key);
      if (i >= 0) {
        const radios = document.querySelectorAll(`#rate-${question} input[type=radio]`);
        if (radios[i]) radios[i].click();
        e.preventDefault();
        return;
      }
    }
    if (key === "enter") { click("#rate-submit"); e.preventDefault(); }
    else if (key === "u") { click("#rate-undo"); e.preventDefault(); }
    else if (key === "f") {
      if (document.fullscreenElement) document.exitFullscreen();
      else document.querySelector("#rate-images")?.requestFullscreen?.();
      e.preventDefault();
    }
  });
})();
</script>
"""

# Runs in the browser before the submit handler: replaces the last two inputs (client ms, fullscreen) with measured ones.
SUBMIT_JS = """(study, token, quality, alignment, ms, fullscreen) => {
  const [measured, used] = window.rateClientValues ? window.rateClientValues() : [null, false];
  return [study, token, quality, alignment, measured, used];
}"""
