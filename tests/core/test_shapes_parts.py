"""The `shapes` teacher's parts: a CLIP tokenizer written by the studio in which every caption word is one token,
and the stage-2 batches (VAE latents of rendered scenes, caption tokens, a tenth of captions dropped)."""

from __future__ import annotations

import torch

from core.shapes import training_scene
from core.teachers.shapes_parts import (
    CAPTION_DROP,
    MAX_TOKENS,
    LatentCaptionBatches,
    ShapesArchitecture,
    build_parts,
    caption_words,
)


def test_every_caption_word_is_one_token_and_every_caption_fits(tmp_path):
    from transformers import CLIPTokenizer

    parts = build_parts(ShapesArchitecture(), tmp_path / "tok")
    tokenizer = parts["tokenizer"]
    for word in caption_words():
        ids = tokenizer(word).input_ids
        assert len(ids) == 3 and tokenizer.convert_ids_to_tokens(ids[1]) == word + "</w>", word
    # The files alone rebuild the same tokenizer (what a saved pipeline folder carries).
    reread = CLIPTokenizer(vocab=str(tmp_path / "tok" / "vocab.json"), merges=str(tmp_path / "tok" / "merges.txt"))
    longest = max((training_scene(s).caption for s in range(2000)), key=len)
    assert reread(longest).input_ids == tokenizer(longest).input_ids
    assert len(tokenizer(longest).input_ids) <= MAX_TOKENS
    assert parts["text_encoder"].config.vocab_size == len(tokenizer)


def test_latent_batches_drop_a_tenth_of_captions_reproducibly(tmp_path):
    parts = build_parts(ShapesArchitecture(), tmp_path / "tok")
    batches = LatentCaptionBatches(parts["vae"], parts["tokenizer"], scaling_factor=0.5)
    a = batches(400, torch.Generator().manual_seed(3))
    b = batches(400, torch.Generator().manual_seed(3))
    assert a["x"].shape == (400, 4, 16, 16) and a["cond"].shape == (400, MAX_TOKENS)
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["cond"], b["cond"])
    empty = batches.tokens([""])[0]
    dropped = (a["cond"] == empty).all(dim=1).float().mean().item()
    assert abs(dropped - CAPTION_DROP) < 0.05  # 400 draws: the binomial's standard deviation is 0.015
