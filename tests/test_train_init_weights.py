"""``model.weights`` / ``kmax train --weights``: a fresh run starts from a native folder."""

from __future__ import annotations

import pytest
import torch

from kmax_deeplab.checkpoints.native import load_native, save_native
from kmax_deeplab.config import get_preset
from kmax_deeplab.modeling.families import family_of


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from kmax_deeplab.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, 4, 2, image_size=128, seed=0)
    return root


def _init_folder(tmp_path, preset="synthetic/kmax_tiny", seed=123):
    cfg = get_preset(preset)
    torch.manual_seed(seed)
    model = family_of(cfg).build_model(cfg)
    with torch.no_grad():  # far from any fresh initialisation
        for p in model.parameters():
            p.add_(0.5)
    return save_native(tmp_path / "init", model.state_dict(), cfg, metadata={"source": "test"}), model


TINY = ["solver.batch_size=2", "solver.warmup_iters=1", "solver.log_period=1", "solver.device=cpu"]


@pytest.mark.slow
def test_fresh_run_starts_from_the_folder_and_resume_ignores_it(synthetic_root, tmp_path, monkeypatch):
    from kmax_deeplab.cli import main
    from kmax_deeplab.engine.trainer import Trainer

    starts = []
    train = Trainer.train

    def record_start(self, *a, **k):
        starts.append({k_: v.clone() for k_, v in self.model.state_dict().items()})
        return train(self, *a, **k)

    monkeypatch.setattr(Trainer, "train", record_start)
    folder, model = _init_folder(tmp_path)
    out = tmp_path / "run"
    args = ["train", "--config", "synthetic/kmax_tiny", "--output-dir", str(out), "--data-root",
            str(synthetic_root), "--no-progress", "--weights", str(folder), *TINY]
    assert main(args + ["solver.max_iters=1"]) == 0
    expected = model.state_dict()
    assert starts[0].keys() == expected.keys()
    assert all(torch.equal(starts[0][k], expected[k]) for k in expected)
    _, final = load_native(out / "model_final")  # and it trained from there
    assert not all(torch.equal(final[k], expected[k]) for k in expected)
    # --resume: the run's checkpoint wins over model.weights (which may even be gone)
    assert main(["train", "--resume", "--resume-with-changes", "solver.max_iters", *args[1:],
                 "solver.max_iters=2"]) == 0
    ckpt = torch.load(out / "model_0000001.pt", weights_only=True)["model"]
    assert all(torch.equal(starts[1][k], ckpt[k]) for k in ckpt)


def test_wrong_family_or_shapes_refused_in_one_line(tmp_path):
    from kmax_deeplab.engine.build import load_initial_weights
    from kmax_deeplab.errors import InputError

    folder, _ = _init_folder(tmp_path)
    knet = get_preset("synthetic/knet_tiny")
    knet.model.weights = str(folder)
    with pytest.raises(InputError, match=r"holds a 'kmax' model, the config builds 'knet'"):
        load_initial_weights(family_of(knet).build_model(knet), knet)
    cfg = get_preset("synthetic/kmax_tiny")
    cfg.model.num_classes += 1
    cfg.model.weights = str(folder)
    with pytest.raises(InputError, match=r"does not fit the model.*shape differs: ") as e:
        load_initial_weights(family_of(cfg).build_model(cfg), cfg)
    assert "\n" not in str(e.value)
    cfg.model.weights = str(tmp_path / "nowhere")
    with pytest.raises(InputError, match=r"model.weights: .*nowhere.*not a kmax-deeplab checkpoint folder"):
        load_initial_weights(family_of(cfg).build_model(cfg), cfg)
