"""Test helpers for the predictor tests: a brightness-driven fake model and a small meta.

The fake model honours the model contract (input ``[B, 3, H, W]`` RGB 0..255 at exactly the
configured size; output ``MaskTransformerOutput`` with stride-4 masks) and makes its masks a
known function of the image, so geometry errors (wrong crop, wrong resize) show up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


class BrightnessModel(nn.Module):
    """Query 0 owns bright pixels, query 1 dark ones, the others nothing.

    Mask logits at stride 4: ``q0 = k * (mean RGB - 127.5) / 127.5``, ``q1 = -q0``, others -k.
    Class logits: q0 -> train id ``bright_class``, q1 -> ``dark_class``, both w.p. ~0.98.
    """

    def __init__(self, image_size=(33, 33), num_classes=3, num_queries=4, bright_class=0,
                 dark_class=1, k=20.0):
        super().__init__()
        self.image_size = tuple(image_size)
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.k = k
        logits = torch.full((num_queries, num_classes + 1), -4.0)
        logits[:, -1] = 4.0  # other queries: void
        logits[0, bright_class] = 4.0
        logits[0, -1] = -4.0
        logits[1, dark_class] = 4.0
        logits[1, -1] = -4.0
        self.class_logits = nn.Parameter(logits)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, images):
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"model takes {self.image_size}, got {tuple(images.shape[-2:])}")
        b = images.shape[0]
        x = (images.mean(1) - 127.5) / 127.5 * self.k * self.scale  # [B, H, W]
        x = x[:, ::4, ::4]  # stride 4: (H - 1) / 4 + 1
        q0 = x[:, None]
        rest = torch.full((b, self.num_queries - 2, *x.shape[-2:]), -self.k, dtype=x.dtype)
        masks = torch.cat([q0, -q0, rest], 1)
        d = 8
        return {"pred_logits": self.class_logits.expand(b, -1, -1).to(x.dtype),
                "pred_masks": masks,
                "pixel_feature": torch.nn.functional.normalize(torch.ones(b, d, *x.shape[-2:]), dim=1),
                "aux_outputs": []}


@dataclass(frozen=True)
class FakeMeta:
    """The part of ``DatasetMeta`` the predictor reads."""

    categories: tuple
    name: str = "fake"
    label_divisor: int = 256
    ignore_label: int = 0
    train_id_to_category_id: tuple = field(init=False)
    num_classes: int = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "train_id_to_category_id", tuple(c["id"] for c in self.categories))
        object.__setattr__(self, "num_classes", len(self.categories))

    def is_thing(self, train_id: int) -> bool:
        return bool(self.categories[train_id]["isthing"])


def small_meta() -> FakeMeta:
    return FakeMeta(categories=(
        {"id": 1, "name": "disc", "isthing": 1, "color": [220, 20, 60]},
        {"id": 5, "name": "sky", "isthing": 0, "color": [70, 130, 180]},
        {"id": 6, "name": "ground", "isthing": 0, "color": [120, 120, 60]},
    ))
