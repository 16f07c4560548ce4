"""`kmax app` in a real headless Chromium: upload a bundled photo, check overlay and legend.

Oracle: the Predictor API on the same photo with the same weights (a seeded random tiny kMaX
saved as a native folder): the legend must list exactly its segments, and the overlay must be
the photo recoloured where (and only where the overlay drawing puts colour) its segments are.
Needs Debian's `chromium` (the Makefile's install step) and the [app] extra; skipped with a
message where they cannot be installed. Set KMAX_UPDATE_SCREENSHOT=1 to refresh
docs/app_screenshot.jpg (written anyway when it is missing).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kmax_deeplab

pytest.importorskip("gradio", reason="gradio missing: pip install 'kmax-deeplab[app]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright missing: pip install playwright")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (make install runs apt-get install chromium)",
                allow_module_level=True)

from kmax_deeplab.app import legend_rows  # noqa: E402
from kmax_deeplab.checkpoints.native import save_native  # noqa: E402
from kmax_deeplab.config import apply_overrides, get_preset  # noqa: E402
from kmax_deeplab.engine.predictor import Predictor, load_image  # noqa: E402
from kmax_test_utils import randomise_batch_norms  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "app_screenshot.jpg"
PHOTO = sorted((Path(kmax_deeplab.__file__).parent / "assets" / "coco_sample").glob("*.jpg"))[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    cfg = apply_overrides(get_preset("synthetic/kmax_tiny"), [
        "model.image_size=[65,65]", "postprocess.thing_threshold=0.0",
        "postprocess.stuff_threshold=0.0", "postprocess.pixel_confidence_threshold=0.2",
        "postprocess.overlap_threshold=0.3"])
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        predictor = Predictor.from_config(cfg)
    randomise_batch_norms(predictor.model, 0)
    return save_native(tmp_path_factory.mktemp("app") / "tiny", predictor.model.state_dict(), cfg)


@pytest.fixture(scope="module")
def server(model_dir):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kmax_deeplab.cli", "app", "--model", str(model_dir),
                             "--no-zoo", "--host", "127.0.0.1", "--port", str(port), "--share", "false"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("kmax app did not start:\n" + (proc.stdout.read() if proc.stdout else ""))
            time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def image_from_src(page, src: str) -> np.ndarray:
    if src.startswith("data:"):
        data = base64.b64decode(src.split(",", 1)[1])
    else:
        data = page.request.get(src).body()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.slow
def test_upload_photo_and_read_overlay_and_legend(server, model_dir, tmp_path):
    expected_predictor = Predictor.from_pretrained(model_dir)
    photo = load_image(PHOTO)
    expected = expected_predictor(photo)
    rows = legend_rows(expected["segments_info"], expected_predictor.meta.categories,
                       photo.shape[0] * photo.shape[1])
    assert len(rows) >= 2

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(server, wait_until="load", timeout=60_000)
            page.wait_for_selector("#kmax-run", timeout=60_000)
            page.locator("#kmax-input input[type=file]").set_input_files(str(PHOTO))
            page.wait_for_selector("#kmax-input img", timeout=30_000)
            page.click("#kmax-run")
            page.wait_for_selector("#kmax-legend tbody tr", timeout=90_000)
            page.wait_for_selector("#kmax-overlay img", timeout=30_000)
            legend = page.eval_on_selector_all(
                "#kmax-legend tbody tr",
                "rows => rows.map(r => [...r.querySelectorAll('td')].map(td => td.innerText.trim()))")
            overlay = image_from_src(page, page.get_attribute("#kmax-overlay img", "src"))
            shot = SCREENSHOT if (os.environ.get("KMAX_UPDATE_SCREENSHOT") or not SCREENSHOT.exists()) \
                else tmp_path / "app_screenshot.jpg"
            page.screenshot(path=str(shot), full_page=True, type="jpeg", quality=70)
        finally:
            browser.close()

    # legend: the API's segments, in order (id, class, thing/stuff, score, area %)
    assert [row[1:] for row in legend] == [
        [str(r["id"]), r["name"], r["kind"], f"{r['score']:.3f}", f"{r['area_pct']:.2f}%"]
        for r in rows]
    # overlay: same size as the photo, recoloured inside the segments, untouched in void
    assert overlay.shape == photo.shape
    changed = np.abs(overlay.astype(int) - photo.astype(int)).sum(-1) > 0
    segments = expected["panoptic"] > 0
    assert changed[segments].mean() > 0.8
    if (~segments).any():
        assert changed[~segments].mean() < 0.2  # only labels / outlines spill over
