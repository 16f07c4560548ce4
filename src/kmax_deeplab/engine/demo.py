"""``kmax demo``: the whole library on bundled data, no download, CPU only.

1. write the synthetic shapes dataset (COCO-panoptic format) and an overview picture;
2. train ``synthetic/kmax_tiny`` from scratch (progress bar, checkpoints, metrics);
3. evaluate PQ on the synthetic validation split (in-memory PQ, the official algorithm);
4. write predictions (panoptic PNG + COCO-panoptic JSON) and overlays of validation images,
   loading the exported ``model_final/`` like ``kmax predict --model`` does;
5. run the same prediction path on the two real COCO photos bundled in
   ``kmax_deeplab/assets/coco_sample`` to show it on real photos. A model trained on
   synthetic shapes knows only discs, squares, triangles, stars, sky, ground and wall:
   it is **not** a COCO model, and its labels on those photos are meaningless.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

# Defaults of the full demo: measured on a 2-core CPU VM (see README "Demo").
DEMO_NUM_TRAIN = 200
DEMO_NUM_VAL = 40
DEMO_ITERS = 1500  # the synthetic/kmax_tiny schedule (solver.max_iters)
# --quick: seconds, for tests; the numbers are meaningless.
QUICK_NUM_TRAIN = 8
QUICK_NUM_VAL = 2
QUICK_ITERS = 2
NOT_COCO_NOTE = ("NOTE: this model was trained for a few minutes on synthetic shapes; it is NOT "
                 "a COCO model and its labels on these photos are meaningless. It only shows the "
                 "prediction path. For real COCO predictions: kmax predict photo.jpg --output "
                 "preds/ --model kmax_r50_coco")


def coco_sample_images() -> list[Path]:
    """The bundled COCO val2017 photos (see ``assets/coco_sample/LICENSE.md``)."""
    folder = Path(str(resources.files("kmax_deeplab") / "assets" / "coco_sample"))
    files = sorted(folder.glob("*.jpg"))
    if not files:
        raise FileNotFoundError(f"{folder}: the bundled COCO sample photos are missing "
                                "(is the package installed with its package data?)")
    return files


def prepare_demo_data(output: str | Path, num_train: int = DEMO_NUM_TRAIN,
                      num_val: int = DEMO_NUM_VAL, seed: int = 0, image_size: int = 128,
                      overview_samples: int = 8) -> dict[str, Any]:
    """Write the synthetic dataset under ``output/data`` and ``output/overview.png``.

    Returns:
        ``{"data_root", "train_json", "val_json", "overview", "meta"}``; ``data_root`` is
        the ``DataConfig.root`` for the ``synthetic/kmax_tiny`` preset.
    """
    from kmax_deeplab.data.catalog import get_dataset_meta
    from kmax_deeplab.data.coco_panoptic import COCOPanopticDataset
    from kmax_deeplab.data.synthetic import write_synthetic_dataset
    from kmax_deeplab.visualize import dataset_overview

    output = Path(output)
    root = output / "data"
    jsons = write_synthetic_dataset(root, num_train, num_val, image_size=image_size, seed=seed)
    meta = get_dataset_meta("synthetic")
    ds = COCOPanopticDataset(root / "train" / "images", jsons["train"], root / "train" / "panoptic", meta)
    n = min(overview_samples, len(ds))
    overview = dataset_overview((ds[i] for i in range(n)), meta, output / "overview.png", columns=2)
    return {"data_root": root, "train_json": jsons["train"], "val_json": jsons["val"],
            "overview": overview, "meta": meta}


def predict_to_folder(predictor: Any, files: list[Path], output: Path) -> Path:
    """Predict ``files`` and write ``<stem>.png``, ``<stem>_overlay.jpg``, ``predictions.json``.

    The same writer as ``kmax predict``. Returns the JSON path.
    """
    from kmax_deeplab.engine.predictor import load_image
    from kmax_deeplab.engine.writers import PredictionWriter

    writer = PredictionWriter(output, predictor.meta.categories, overlay=True)
    for path in files:
        image = load_image(path)
        writer.add(path, image, predictor.predict_arrays([image])[0])
    return writer.finish()


@dataclass
class DemoResult:
    """What :func:`run_demo` produced (paths and numbers)."""

    output: Path
    overview: Path
    train_dir: Path
    final_weights: Path
    pq: dict[str, Any]
    val_predictions: Path
    val_overlays: Path
    coco_predictions: Path
    iterations: int
    seconds: dict[str, float] = field(default_factory=dict)


def run_demo(output: str | Path = "demo_output", *, iters: int | None = None, quick: bool = False,
             num_train: int | None = None, num_val: int | None = None, seed: int = 0,
             progress: bool = True, echo: Callable[[str], None] = print) -> DemoResult:
    """Run every demo stage (see the module docstring) into ``output``.

    Args:
        output: demo folder (``data/``, ``overview.png``, ``train/``, ``val_predictions/``,
            ``val_overlays.png``, ``coco_sample_predictions/``).
        iters: training steps (default 1500, the preset's schedule; 2 with ``quick``).
        quick: a seconds-long run with a handful of images (tests).
        num_train / num_val: synthetic images per split (default 200 / 40; 8 / 2 quick).
        seed: dataset and training seed.
        progress: tqdm progress bar during training.
        echo: where the report lines go.

    Raises:
        ValueError: ``iters < 1``, ``num_train < 1`` or ``num_val < 1``.
    """
    import time

    from kmax_deeplab.config import get_preset
    from kmax_deeplab.engine.build import train_from_config
    from kmax_deeplab.engine.predictor import Predictor
    from kmax_deeplab.evaluation.report import format_pq_table
    from kmax_deeplab.visualize import save_grid
    from PIL import Image

    iters = int(iters if iters is not None else (QUICK_ITERS if quick else DEMO_ITERS))
    num_train = int(num_train if num_train is not None else (QUICK_NUM_TRAIN if quick else DEMO_NUM_TRAIN))
    num_val = int(num_val if num_val is not None else (QUICK_NUM_VAL if quick else DEMO_NUM_VAL))
    if iters < 1 or num_train < 1 or num_val < 1:
        raise ValueError(f"kmax demo needs iters, num_train and num_val >= 1, got {iters}, "
                         f"{num_train}, {num_val}")
    output = Path(output)
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    data = prepare_demo_data(output, num_train, num_val, seed=seed)
    seconds["data"] = time.perf_counter() - t
    echo(f"[demo] 1/5 synthetic dataset: {num_train} train / {num_val} val images under {data['data_root']}")
    echo(f"[demo]     overview of training samples with their panoptic labels: {data['overview']}")

    cfg = get_preset("synthetic/kmax_tiny")
    train_dir = output / "train"
    if (train_dir / "config.yaml").is_file():  # a previous demo run: start afresh
        shutil.rmtree(train_dir)
    cfg.data.root = str(data["data_root"])
    cfg.solver.seed = seed
    cfg.solver.max_iters = iters
    cfg.solver.warmup_iters = min(cfg.solver.warmup_iters, max(iters // 10, 0))
    cfg.solver.checkpoint_period = max(iters // 3, 1)
    cfg.solver.eval_period = 0  # evaluated once, at the end
    cfg.solver.log_period = max(1, min(cfg.solver.log_period, iters))
    cfg.solver.device = "cpu"
    if quick:
        cfg.solver.batch_size = 2
    echo(f"[demo] 2/5 training {cfg.name} from scratch on CPU: {iters} steps of "
         f"{cfg.solver.batch_size} images ({cfg.model.image_size[0]}x{cfg.model.image_size[1]} canvas)")
    t = time.perf_counter()
    run = train_from_config(cfg, output_dir=train_dir, progress=progress)
    seconds["train+eval"] = time.perf_counter() - t
    final = run["final"]
    pq = run["pq_result"] or {}
    echo(f"[demo]     checkpoints, metrics.jsonl and TensorBoard logs: {train_dir}")
    echo(f"[demo]     exported weights (kmax predict --model {final}): {final}")

    echo(f"[demo] 3/5 panoptic quality on the {pq.get('num_images', num_val)} synthetic validation images:")
    echo(format_pq_table(pq))

    t = time.perf_counter()
    predictor = Predictor.from_pretrained(final)
    val_dir = data["data_root"] / "val" / "images"
    val_files = sorted(val_dir.glob("*.jpg"))[:8]
    val_out = output / "val_predictions"
    predict_to_folder(predictor, val_files, val_out)
    overlays = save_grid([Image.open(val_out / f"{p.stem}_overlay.jpg") for p in val_files],
                         output / "val_overlays.png", columns=4)
    echo(f"[demo] 4/5 predictions on {len(val_files)} validation images (PNG + predictions.json + "
         f"overlays): {val_out}; grid: {overlays}")

    coco_out = output / "coco_sample_predictions"
    predict_to_folder(predictor, coco_sample_images(), coco_out)
    seconds["predict"] = time.perf_counter() - t
    echo(f"[demo] 5/5 the same prediction path on 2 real COCO val2017 photos: {coco_out}")
    echo(f"[demo]     {NOT_COCO_NOTE}")
    return DemoResult(output=output, overview=data["overview"], train_dir=train_dir,
                      final_weights=final, pq=pq, val_predictions=val_out, val_overlays=overlays,
                      coco_predictions=coco_out, iterations=int(run["iteration"]), seconds=seconds)
