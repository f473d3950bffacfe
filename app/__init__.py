"""The studio: Gradio UI and the `distill-studio` command line. Never imports torch (see tests/test_layers.py)."""
