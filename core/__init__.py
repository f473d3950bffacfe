"""Distill Studio's ML library: torch + diffusers only, nothing of the app, workers or storage.

Kept empty on purpose, so that `import core.specs` loads no torch.
"""
