"""Bad input for MaX-DeepLab (issue #11 "Bad input"): foreign checkpoints refused in one line naming
what was expected and what was found. (kMaX TF weights into MaX and S into L:
``test_max_deeplab_parity.py::test_wrong_family_or_variant_is_refused_in_one_line``; the same for
initial checkpoints: ``test_max_deeplab_init.py``; a canvas the axial attention cannot cover:
``test_max_deeplab_model.py::test_canvas_beyond_the_axial_query_block_is_refused``.)
"""

from __future__ import annotations

import pytest
import torch

from kmax_deeplab.checkpoints.deeplab2_max import load_deeplab2_max_checkpoint, load_deeplab2_max_init
from kmax_deeplab.checkpoints.table import CheckpointMismatchError
from kmax_deeplab.cli import main


@pytest.fixture()
def pytorch_files(tmp_path):
    knet = tmp_path / "knet_r50.pth"  # mmdet K-Net layout (checkpoints/mmdet.py)
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(2), "rpn_head.init_kernels.weight": torch.zeros(2),
                               "roi_head.mask_head.0.fc_cls.weight": torch.zeros(2)}, "meta": {}}, knet)
    kmax = tmp_path / "kmax_r50.pth"  # bytedance detectron2 kMaX layout
    torch.save({"model": {"backbone.stem.conv1.weight": torch.zeros(2),
                          "sem_seg_head.predictor.class_embed.weight": torch.zeros(2)}}, kmax)
    return {"K-Net (mmdet)": knet, "kMaX-DeepLab (detectron2)": kmax}


def test_pytorch_checkpoints_into_max_are_refused_in_one_line(pytorch_files):
    for found, path in pytorch_files.items():
        for load, want in ((load_deeplab2_max_checkpoint, "max_deeplab_s"), (load_deeplab2_max_init, "max_deeplab_s")):
            kwargs = {"is_backbone": lambda k: True} if load is load_deeplab2_max_init else {}
            with pytest.raises(CheckpointMismatchError) as e:
                load(path, torch.nn.Module(), variant="s", **kwargs)
            msg = str(e.value)
            assert f"holds a {found} checkpoint but the model is {want}" in msg and "\n" not in msg


def test_cli_one_line(pytorch_files, tmp_path, capsys):
    assert main(["convert", "--from", "mmdet", str(pytorch_files["K-Net (mmdet)"]), str(tmp_path / "o"),
                 "--config", "coco/max_deeplab_s_641"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "model family 'max_deeplab' has no 'mmdet' checkpoint importer (it has: deeplab2, imagenet)" in err
