"""K-Net against the original code (ZwwWayne/K-Net @5e50ee5, mmdet 2.28.2, run on CPU).

The fixtures in ``tests/data/parity/knet/`` hold the ORIGINAL code's outputs for the weights
``seeded_knet`` builds (exported to the mmdet layout and loaded there strictly), on a real
COCO photo resized to 62×93; ``tools/knet_parity.py`` regenerates them and says how.
Tolerance: fp32, max |ours − ref| ≤ 1e-4 · max |ref| per tensor (measured: ≤ 2e-6).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kmax_deeplab.checkpoints.mmdet import load_mmdet_checkpoint, save_mmdet
from kmax_deeplab.modeling.knet.postprocess import knet_instance_inference, knet_panoptic_inference

from knet_test_utils import PARITY_DIR, checksums, postprocess_case, seeded_knet, subsample

RTOL = 1e-4
META = json.loads((PARITY_DIR / "meta.json").read_text())
VALID = tuple(META["image_size"])
ORI = tuple(META["ori_shape"])


def _golden(task: str) -> dict[str, np.ndarray]:
    return dict(np.load(PARITY_DIR / f"{task}.npz"))


def _check_tensor(name: str, ours: np.ndarray, gold: dict) -> None:
    assert list(ours.shape) == list(gold[f"{name}.shape"]), name
    ref_val, ref_sum = gold[f"{name}.val"], gold[f"{name}.sum"]
    scale = np.abs(ref_val).max()
    np.testing.assert_allclose(subsample(ours)[1], ref_val, rtol=0, atol=RTOL * scale, err_msg=name)
    # whole-tensor checksums: sum, sum |x|, sum x² (relative to sum |x| / sum x²)
    mine = checksums(ours)
    assert abs(mine[0] - ref_sum[0]) <= RTOL * ref_sum[1], name
    np.testing.assert_allclose(mine[1:], ref_sum[1:], rtol=RTOL, err_msg=name)


def _same_partition(ids: torch.Tensor, segments: list[dict], mm_pan: np.ndarray, void_label: int) -> None:
    """Our (ids, segments_info) and mmdet's ``label + k·1000`` map describe the same partition."""
    ids = ids.cpu().numpy()
    assert ids.shape == mm_pan.shape
    np.testing.assert_array_equal(ids == 0, mm_pan == void_label)
    seen = set()
    for seg in segments:
        values = np.unique(mm_pan[ids == seg["id"]])
        assert len(values) == 1, f"segment {seg['id']} spans mmdet segments {values}"
        assert values[0] % 1000 == seg["category_id"]
        assert (mm_pan == values[0]).sum() == seg["area"]
        seen.add(int(values[0]))
    assert seen == set(np.unique(mm_pan).tolist()) - {void_label}


@pytest.fixture(scope="module", params=["panoptic", "instance"])
def parity_case(request, tmp_path_factory):
    task = request.param
    model = seeded_knet(task)
    # the weights travel through the original layout and back, as the fixtures' did
    pth = tmp_path_factory.mktemp("knet") / f"knet_{task}.pth"
    save_mmdet(model.state_dict(), pth, meta={"task": task})
    model.load_state_dict(load_mmdet_checkpoint(pth, model), strict=True)
    gold = _golden(task)
    with torch.no_grad():
        out = model(torch.from_numpy(gold["image"]).permute(2, 0, 1)[None].float())
    return task, model, gold, out


@pytest.mark.slow
def test_stage_outputs_match_original(parity_case):
    task, _, gold, out = parity_case
    _check_tensor("head_masks", out["init_all_masks"].numpy(), gold)
    _check_tensor("head_semantic", out["semantic_logits"].numpy(), gold)
    stages = out["aux_outputs"] + [out]
    assert len(stages) == 3
    for s, o in enumerate(stages):
        _check_tensor(f"s{s}_cls", o["pred_logits"].numpy(), gold)
        _check_tensor(f"s{s}_masks", o["pred_masks"].numpy(), gold)


@pytest.mark.slow
def test_results_match_original(parity_case):
    task, model, gold, out = parity_case
    geometry = dict(canvas_size=out["canvas_size"], valid_size=VALID, output_size=ORI)
    if task == "panoptic":
        ids, segs = knet_panoptic_inference(out["pred_logits"][0], out["pred_masks"][0], num_thing_classes=80,
                                            num_kernels=100, **geometry)
        _same_partition(ids, segs, gold["pan_results"], 133)
    else:
        # our logits differ from the original's by ~1e-6: allow a couple of pixels whose
        # probability sits on the 0.5 threshold flip (measured 1-4 of 1.1 M pixels, by thread count)
        _same_instances(knet_instance_inference(out["pred_logits"][0], out["pred_masks"][0], **geometry),
                        gold["inst_labels"], gold["inst_scores"], gold["inst_masks"], max_flips=20)


def _same_instances(results, labels, scores, masks, max_flips: int = 0) -> None:
    """Ours (score order) vs mmdet's (grouped by class, score order inside a class)."""
    from pycocotools import mask as mask_utils

    order = sorted(range(len(results)), key=lambda i: results[i]["category_id"])  # stable: keeps score order
    assert [results[i]["category_id"] for i in order] == labels.tolist()
    np.testing.assert_allclose([results[i]["score"] for i in order], scores, rtol=1e-5)
    flips = sum(int((mask_utils.decode(results[i]["segmentation"]) != masks[j]).sum()) for j, i in enumerate(order))
    assert flips <= max_flips, f"{flips} mask pixels differ from the original's"


@pytest.mark.slow
@pytest.mark.parametrize("task", ["panoptic", "instance"])
def test_postprocessing_matches_original_on_diverse_outputs(task):
    """The seeded network's masks are nearly uniform, so the merging is also checked on
    diverse random outputs that the original ``get_panoptic`` / ``get_seg_masks`` processed."""
    gold = _golden(task)
    num_classes, num_kernels = (133, 153) if task == "panoptic" else (80, 100)
    cls, masks = (torch.from_numpy(a) for a in postprocess_case(num_classes, num_kernels))
    geometry = dict(canvas_size=(64, 96), valid_size=VALID, output_size=ORI)
    if task == "panoptic":
        ids, segs = knet_panoptic_inference(cls, masks, num_thing_classes=80, num_kernels=100, **geometry)
        assert len(segs) >= 5 and any(s["isthing"] for s in segs) and not all(s["isthing"] for s in segs)
        _same_partition(ids, segs, gold["pp_pan_results"], 133)
    else:
        _same_instances(knet_instance_inference(cls, masks, **geometry), gold["pp_inst_labels"],
                        gold["pp_inst_scores"], gold["pp_inst_masks"])
