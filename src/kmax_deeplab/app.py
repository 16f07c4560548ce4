"""The web demo (``kmax app``; Gradio, extra ``[app]``): upload a photo, see its panoptic segmentation.

The work is split so that only :func:`build_demo` needs Gradio:

- :class:`ModelChoices` resolves what the user picked (a model-zoo name, a native checkpoint
  folder, the folder ``kmax demo`` trains, or the model given on the command line) into a
  cached :class:`~kmax_deeplab.engine.predictor.Predictor`;
- :func:`run_network` runs pre-processing + the network once and returns the outputs to cache;
- :func:`render` runs only the post-processing (thresholds from the sliders) and draws the
  overlay, the legend and the download files, so moving a slider never re-runs the network.

Nothing here is specific to one model family: the predictor's ``postprocess`` is the family's.
"""

from __future__ import annotations

import dataclasses
import html
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

__all__ = ["ModelChoices", "RenderResult", "build_demo", "legend_rows", "prepare_image",
           "render", "run_network", "sample_photos", "DEMO_MODEL_DIR", "MAX_SIDE"]

# Where `kmax demo` leaves its trained model (engine/demo.py: <output>/train/model_final).
DEMO_MODEL_DIR = Path("demo_output") / "train" / "model_final"
# Longer side above which an upload is downscaled before anything else (with a note).
MAX_SIDE = 2048
FOLDER_CHOICE = "native folder (path below)"


def sample_photos() -> list[Path]:
    """The bundled COCO val2017 photos (``assets/coco_sample``; licence in its LICENSE.md)."""
    from kmax_deeplab.engine.demo import coco_sample_images

    return coco_sample_images()


def prepare_image(image: Any, max_side: int = MAX_SIDE) -> tuple[np.ndarray, str]:
    """Read an upload and downscale it when its longer side exceeds ``max_side``.

    Args:
        image: a path, PIL image or uint8 array (what Gradio hands over), or ``None``.
        max_side: longest side kept as is.

    Returns:
        ``(rgb [H, W, 3] uint8, note)``; ``note`` is ``""`` or says how it was resized.

    Raises:
        ValueError: no image, or the file is not a readable image (one line, naming it).
    """
    from kmax_deeplab.engine.predictor import load_image

    if image is None:
        raise ValueError("no image: upload a photo or pick one of the examples")
    try:
        rgb = load_image(image)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None
    except (ValueError, TypeError) as e:
        name = Path(image).name if isinstance(image, (str, Path)) else "the upload"
        raise ValueError(f"{name} is not an image this demo can read ({e}); "
                         "upload a JPEG, PNG, BMP, TIFF or WebP photo") from None
    h, w = rgb.shape[:2]
    if max(h, w) <= max_side:
        return rgb, ""
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
    return rgb, (f"The image was {w}x{h} pixels; it was resized to {size[0]}x{size[1]} "
                 f"(longer side {max_side}) before segmentation.")


@dataclass
class ModelChoices:
    """The models the demo offers, loaded lazily and cached.

    Args:
        initial: ``{label: loader}`` of models given on the command line (``loader()``
            returns a Predictor), shown first.
        zoo: offer the model-zoo names (downloaded on first use).
        demo_dir: the ``kmax demo`` model folder, offered when it exists.
        device: torch device of the predictors.
    """

    initial: dict[str, Callable[[], Any]] = field(default_factory=dict)
    zoo: bool = True
    demo_dir: Path = DEMO_MODEL_DIR
    device: str = "cpu"
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def labels(self) -> list[str]:
        """Dropdown entries, in display order."""
        out = list(self.initial)
        if Path(self.demo_dir).is_dir():
            out.append(f"kmax demo model ({self.demo_dir})")
        if self.zoo:
            from kmax_deeplab.checkpoints.zoo import ZOO

            out += sorted(ZOO)
        return out + [FOLDER_CHOICE]

    def get(self, label: str, folder: str = "", progress: Callable[[str], None] | None = None):
        """The Predictor for a dropdown ``label`` (and the folder box for the folder entry).

        Raises:
            ValueError: unknown label, an empty or missing folder, a zoo download or weights
                that fail (the message says which).
        """
        from kmax_deeplab.engine.predictor import Predictor

        if label == FOLDER_CHOICE:
            folder = (folder or "").strip()
            if not folder:
                raise ValueError("type the path of a native checkpoint folder "
                                 "(model.safetensors + config.yaml) in the folder box")
            key = f"folder:{Path(folder).resolve()}"
        elif label.startswith("kmax demo model ("):
            key, folder = f"folder:{Path(self.demo_dir).resolve()}", str(self.demo_dir)
        else:
            key = label
        if key in self._cache:
            return self._cache[key]
        if progress:
            progress(f"loading {label if not folder else folder}")
        try:
            if key.startswith("folder:"):
                if not Path(folder).is_dir():
                    raise FileNotFoundError(f"model folder {folder} not found")
                predictor = Predictor.from_pretrained(folder, device=self.device)
            elif label in self.initial:
                predictor = self.initial[label]()
            else:
                from kmax_deeplab.checkpoints.zoo import ZOO

                if label not in ZOO:
                    raise KeyError(f"unknown model {label!r}")
                predictor = Predictor.from_zoo(label, device=self.device)
        except (FileNotFoundError, KeyError, ValueError, RuntimeError, OSError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise ValueError(f"model {label!r} could not be loaded: {msg}") from None
        self._cache[key] = predictor
        return predictor


def run_network(predictor: Any, image: np.ndarray) -> dict:
    """Pre-processing + forward pass of one image; the outputs :func:`render` re-uses.

    Returns:
        :meth:`Predictor.forward_batch`'s dict for the single image.
    """
    return predictor.forward_batch([image])


@dataclass
class RenderResult:
    """What :func:`render` returns: overlay, legend rows and the two download files."""

    overlay: np.ndarray  # [H, W, 3] uint8
    segments: list[dict]  # rows of the legend (see legend_rows)
    panoptic: np.ndarray  # [H, W] int32
    png_path: Path
    json_path: Path


def legend_rows(segments_info: Sequence[dict], categories: Sequence[dict],
                num_pixels: int) -> list[dict]:
    """One row per segment: ``id``, ``name``, ``kind`` (thing/stuff), ``score``, ``area_pct``, ``color``."""
    from kmax_deeplab.visualize import segment_color

    table = {int(c["id"]): c for c in categories}
    rows = []
    for s in segments_info:
        cat = table.get(int(s["category_id"]), {})
        rows.append({"id": int(s["id"]), "name": cat.get("name", str(s["category_id"])),
                     "kind": "thing" if s["isthing"] else "stuff",
                     "score": round(float(s["score"]), 3),
                     "area_pct": round(100.0 * int(s["area"]) / max(1, num_pixels), 2),
                     "color": segment_color(s, cat or None)})
    return rows


def legend_html(rows: Sequence[dict]) -> str:
    """The legend as an HTML table (``id="kmax-legend"``; one ``<tr>`` per segment)."""
    if not rows:
        return "<p id='kmax-legend-empty'>No segment passed the thresholds.</p>"
    body = "".join(
        f"<tr data-segment-id='{r['id']}'><td><span style='display:inline-block;width:1em;"
        f"height:1em;background:rgb{tuple(r['color'])}'></span></td><td>{r['id']}</td>"
        f"<td class='kmax-class'>{html.escape(r['name'])}</td><td>{r['kind']}</td>"
        f"<td>{r['score']:.3f}</td><td>{r['area_pct']:.2f}%</td></tr>" for r in rows)
    return ("<table id='kmax-legend'><thead><tr><th></th><th>id</th><th>class</th>"
            "<th>thing/stuff</th><th>score</th><th>area</th></tr></thead><tbody>"
            + body + "</tbody></table>")


def render(predictor: Any, image: np.ndarray, raw: dict, *, opacity: float = 0.5,
           semantic: bool = False, out_dir: str | Path | None = None,
           **thresholds: Any) -> RenderResult:
    """Post-process cached network outputs and draw them (no forward pass).

    Args:
        predictor: the Predictor that produced ``raw``.
        image: ``[H, W, 3]`` uint8, the image that was segmented.
        raw: :func:`run_network`'s result.
        opacity: colour opacity of the overlay, 0..1.
        semantic: colour the semantic map (argmax class per pixel) instead of the segments.
        out_dir: where the PNG and JSON go (a new temporary folder by default).
        **thresholds: ``panoptic_inference`` keywords (``thing_threshold``,
            ``stuff_threshold``, ``overlap_threshold``, ``thing_area_limit``, ...).

    Returns:
        A :class:`RenderResult`; ``png_path`` is the COCO-panoptic id PNG and ``json_path``
        the COCO-panoptic JSON (``images``, ``annotations`` with ``segments_info``,
        ``categories``) of this one image.
    """
    from kmax_deeplab.engine.writers import json_safe_segments, write_panoptic_png
    from kmax_deeplab.visualize import draw_overlay

    pred = predictor.postprocess(raw, [image.shape[:2]], semantic=semantic, **thresholds)[0]
    categories = predictor.meta.categories
    pan, info = pred["panoptic"], pred["segments_info"]
    if semantic:
        cat_ids = list(predictor.meta.train_id_to_category_id)
        present = np.unique(pred["semantic"])
        sem_info = [{"id": int(t) + 1, "category_id": int(cat_ids[t]), "isthing": False}
                    for t in present]
        overlay = draw_overlay(image, pred["semantic"] + 1, sem_info, categories,
                               alpha=opacity, outlines=False)
    else:
        overlay = draw_overlay(image, pan, info, categories, alpha=opacity)
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="kmax_app_"))
    out.mkdir(parents=True, exist_ok=True)
    png, js = out / "panoptic.png", out / "panoptic.json"
    write_panoptic_png(png, pan)
    h, w = pan.shape
    js.write_text(json.dumps({
        "images": [{"id": 0, "file_name": "image.png", "height": int(h), "width": int(w)}],
        "annotations": [{"image_id": 0, "file_name": png.name,
                         "segments_info": json_safe_segments(info)}],
        "categories": [dict(c) for c in categories]}))
    return RenderResult(np.asarray(overlay.convert("RGB")), legend_rows(info, categories, h * w),
                        pan, png, js)


def build_demo(choices: ModelChoices | None = None, *, max_side: int = MAX_SIDE):
    """The Gradio ``Blocks`` of the demo (call ``.launch()`` on it).

    Element ids used by the browser test: ``kmax-input`` (upload), ``kmax-run`` (button),
    ``kmax-overlay`` (output image), ``kmax-legend`` (legend table), ``kmax-status``.

    Raises:
        ImportError: Gradio is missing (``pip install 'kmax-deeplab[app]'``).
    """
    try:
        import gradio as gr
    except ImportError:
        raise ImportError("the web demo needs Gradio: pip install 'kmax-deeplab[app]'") from None

    choices = choices or ModelChoices()
    labels = choices.labels()
    photos = [str(p) for p in sample_photos()]
    # Slider start values: the first model's thresholds when it is a local one (loaded now,
    # so the first click cannot race the page-load update), else the COCO defaults.
    start = dict(thing_threshold=0.7, stuff_threshold=0.5, overlap_threshold=0.8,
                 thing_area_limit=0, stuff_area_limit=0)
    if labels[0] in choices.initial:
        pp = choices.get(labels[0]).cfg.postprocess
        start = {k: getattr(pp, k, v) for k, v in start.items()}

    def thresholds(thing, stuff, overlap, thing_area, stuff_area):
        return dict(thing_threshold=float(thing), stuff_threshold=float(stuff),
                    overlap_threshold=float(overlap), thing_area_limit=int(thing_area),
                    stuff_area_limit=int(stuff_area))

    def draw(state, opacity, semantic, *ths):
        if not state:
            return None, "", None, None
        # only the sliders the family's postprocess section has
        known = {f.name for f in dataclasses.fields(state["predictor"].cfg.postprocess)}
        res = render(state["predictor"], state["image"], state["raw"], opacity=float(opacity),
                     semantic=bool(semantic), out_dir=state["dir"],
                     **{k: v for k, v in thresholds(*ths).items() if k in known})
        return res.overlay, legend_html(res.segments), str(res.png_path), str(res.json_path)

    def segment(image, label, folder, opacity, semantic, *ths, progress=gr.Progress()):
        try:
            progress(0.05, desc="reading the image")
            rgb, note = prepare_image(image, max_side)
            progress(0.15, desc="loading the model")
            predictor = choices.get(label, folder)
            progress(0.4, desc="running the network")
            raw = run_network(predictor, rgb)
        except ValueError as e:
            raise gr.Error(str(e)) from None
        progress(0.9, desc="merging segments")
        state = {"predictor": predictor, "image": rgb, "raw": raw,
                 "dir": tempfile.mkdtemp(prefix="kmax_app_")}
        overlay, legend, png, js = draw(state, opacity, semantic, *ths)
        h, w = rgb.shape[:2]
        status = f"{label}: {w}x{h} image, canvas {predictor.canvas[1]}x{predictor.canvas[0]}."
        return state, overlay, legend, png, js, (status + (" " + note if note else ""))

    with gr.Blocks(title="kmax-deeplab panoptic segmentation") as demo:
        gr.Markdown("## kmax-deeplab: panoptic segmentation\nUpload a photo or pick an example, "
                    "choose a model and press **Segment**. The sliders re-run only the "
                    "merging of the cached network outputs.")
        state = gr.State(None)
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="photo", elem_id="kmax-input",
                                 sources=["upload"])
                model = gr.Dropdown(labels, value=labels[0], label="model", elem_id="kmax-model")
                folder = gr.Textbox(label="native checkpoint folder (for the folder entry)",
                                    placeholder="runs/kmax/model_final")
                run = gr.Button("Segment", variant="primary", elem_id="kmax-run")
                gr.Examples(photos, inputs=[image], label="bundled photos")
            with gr.Column():
                overlay = gr.Image(type="numpy", label="panoptic overlay", elem_id="kmax-overlay",
                                   interactive=False, format="png")
                status = gr.Markdown(elem_id="kmax-status")
                legend = gr.HTML(elem_id="kmax-legend-box")
                with gr.Row():
                    png = gr.DownloadButton("panoptic PNG", elem_id="kmax-png")
                    js = gr.DownloadButton("COCO-panoptic JSON", elem_id="kmax-json")
        with gr.Accordion("display and thresholds", open=True):
            opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="overlay opacity")
            semantic = gr.Checkbox(False, label="show the semantic map")
            thing = gr.Slider(0, 1, value=start["thing_threshold"], step=0.01,
                              label="thing score threshold")
            stuff = gr.Slider(0, 1, value=start["stuff_threshold"], step=0.01,
                              label="stuff score threshold")
            overlap = gr.Slider(0, 1, value=start["overlap_threshold"], step=0.01,
                                label="overlap threshold")
            thing_area = gr.Slider(0, 10000, value=start["thing_area_limit"], step=50,
                                   label="thing area limit (pixels)")
            stuff_area = gr.Slider(0, 20000, value=start["stuff_area_limit"], step=100,
                                   label="stuff area limit (pixels)")
        ths = [thing, stuff, overlap, thing_area, stuff_area]

        def defaults(label, folder):
            try:
                pp = choices.get(label, folder).cfg.postprocess
            except ValueError as e:
                gr.Warning(str(e))
                return [gr.update()] * 5
            return [getattr(pp, k, gr.update()) for k in
                    ("thing_threshold", "stuff_threshold", "overlap_threshold",
                     "thing_area_limit", "stuff_area_limit")]

        run.click(segment, [image, model, folder, opacity, semantic, *ths],
                  [state, overlay, legend, png, js, status])
        for control in (opacity, semantic, *ths):
            control.change(draw, [state, opacity, semantic, *ths], [overlay, legend, png, js],
                           show_progress="hidden")
        model.change(defaults, [model, folder], ths)
    return demo
