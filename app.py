"""Hugging Face Spaces entry point: the `kmax app` web demo (Gradio SDK; `app_file: app.py`).

The Space installs this repository (requirements: `kmax-deeplab[app]`); the demo lists the
model-zoo checkpoints, which the Space downloads on first use.
"""

from kmax_deeplab.app import ModelChoices, build_demo

demo = build_demo(ModelChoices(zoo=True))

if __name__ == "__main__":
    demo.queue().launch()
