"""Dataset metadata: categories, contiguous train ids, label divisor and ignore label.

Every dataset is described by one frozen :class:`DatasetMeta`. Categories are COCO-panoptic
dicts ``{"id", "name", "isthing", "color"}`` listed in *train-id order*: train id ``t`` is
``categories[t]`` and the model's class channel ``t`` (void is the extra channel C).

Label conventions follow spec ``kmax_deeplab.md`` §3:

- COCO: 133 classes (things are category ids 1..90 with gaps, the first 80 train ids),
  label divisor 256, ignore 0.
- Cityscapes: 19 train ids, things are train ids 11..18, label divisor 1000, ignore 255.
  The category ``id`` is the Cityscapes *label id* (7 road .. 33 bicycle), which is also the
  id used by the official evaluation ("eval id" of cityscapesScripts' panoptic JSON).
- ADE20K: 150 classes (100 things, 50 stuff), ids 0..149 in Mask2Former/bytedance order,
  label divisor 1000, ignore 0 (deeplab2 convention).
- synthetic: things disc=1, square=2, triangle=3, star=4; stuff sky=5, ground=6, wall=7.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable, Mapping

__all__ = ["DatasetMeta", "get_dataset_meta", "meta_from_categories", "DATASET_NAMES"]


@dataclass(frozen=True)
class DatasetMeta:
    """Metadata of one panoptic dataset.

    Attributes:
        name: catalog name (``"coco"``, ``"cityscapes"``, ``"ade20k"``, ``"synthetic"``, or
            the name given to :func:`meta_from_categories`).
        categories: COCO-panoptic category dicts ``{"id", "name", "isthing", "color"}`` in
            train-id order (``categories[t]`` is train id ``t``).
        num_classes: C, the number of thing + stuff classes; void/ignore is index C.
        label_divisor: panoptic label = semantic * label_divisor + instance (deeplab2).
        ignore_label: the dataset's semantic ignore value in its deeplab2 label space.
        train_id_to_category_id: category id of each train id, ``len == num_classes``.
        category_id_to_train_id: the inverse mapping.
        thing_train_ids: train ids of thing classes.
        extra: dataset-specific tables (e.g. Cityscapes ``label_ids``/``eval_ids``).
    """

    name: str
    categories: tuple[dict[str, Any], ...]
    num_classes: int
    label_divisor: int
    ignore_label: int
    train_id_to_category_id: tuple[int, ...]
    category_id_to_train_id: dict[int, int]
    thing_train_ids: frozenset[int]
    extra: Mapping[str, Any] = field(default_factory=dict)

    def is_thing(self, train_id: int) -> bool:
        """Return whether contiguous class ``train_id`` is a thing class."""
        return int(train_id) in self.thing_train_ids

    @property
    def stuff_train_ids(self) -> frozenset[int]:
        """Train ids of stuff classes."""
        return frozenset(range(self.num_classes)) - self.thing_train_ids

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names in train-id order."""
        return tuple(c["name"] for c in self.categories)

    @property
    def colors(self) -> tuple[tuple[int, int, int], ...]:
        """RGB colours in train-id order."""
        return tuple(tuple(c["color"]) for c in self.categories)

    def category(self, category_id: int) -> dict[str, Any]:
        """Return the category dict of dataset ``category_id``.

        Raises:
            KeyError: ``category_id`` is not a category of this dataset.
        """
        try:
            return self.categories[self.category_id_to_train_id[int(category_id)]]
        except KeyError:
            raise KeyError(f"{self.name}: unknown category id {category_id}") from None


def meta_from_categories(
    name: str,
    categories: Iterable[Mapping[str, Any]],
    label_divisor: int = 1000,
    ignore_label: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> DatasetMeta:
    """Build a :class:`DatasetMeta` from COCO-panoptic category dicts (any custom dataset).

    Train ids follow the order of ``categories``.

    Raises:
        ValueError: duplicated category ids, a category without ``id``/``name``/``isthing``,
            or an empty list.
    """
    cats = []
    for c in categories:
        missing = [k for k in ("id", "name", "isthing") if k not in c]
        if missing:
            raise ValueError(f"{name}: category {dict(c)!r} lacks {missing}")
        color = c.get("color") or _fallback_color(int(c["id"]))
        cats.append({"id": int(c["id"]), "name": str(c["name"]), "isthing": int(bool(c["isthing"])),
                     "color": [int(v) for v in color]})
    if not cats:
        raise ValueError(f"{name}: no categories")
    ids = [c["id"] for c in cats]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{name}: duplicated category ids {sorted(i for i in set(ids) if ids.count(i) > 1)}")
    return DatasetMeta(
        name=name,
        categories=tuple(cats),
        num_classes=len(cats),
        label_divisor=int(label_divisor),
        ignore_label=int(ignore_label),
        train_id_to_category_id=tuple(ids),
        category_id_to_train_id={cid: t for t, cid in enumerate(ids)},
        thing_train_ids=frozenset(t for t, c in enumerate(cats) if c["isthing"]),
        extra=dict(extra or {}),
    )


def _fallback_color(category_id: int) -> list[int]:
    """A deterministic, well-spread colour for categories that come without one."""
    # Golden-ratio hue walk in a fixed-saturation HSV-like space, as integers 0..255.
    h = (category_id * 0.618033988749895) % 1.0
    i, f = int(h * 6), (h * 6) % 1.0
    v, s = 230, 0.65
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i % 6]
    return [int(round(x)) for x in rgb]


def _load_asset(filename: str) -> list[dict[str, Any]]:
    text = resources.files("kmax_deeplab.data").joinpath("assets", filename).read_text()
    return json.loads(text)


# Cityscapes, 19 evaluated classes in train-id order:
# (name, label id, colour); things are train ids 11..18 (person .. bicycle).
_CITYSCAPES = (
    ("road", 7, (128, 64, 128)),
    ("sidewalk", 8, (244, 35, 232)),
    ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)),
    ("fence", 13, (190, 153, 153)),
    ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)),
    ("traffic sign", 20, (220, 220, 0)),
    ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)),
    ("sky", 23, (70, 130, 180)),
    ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)),
    ("car", 26, (0, 0, 142)),
    ("truck", 27, (0, 0, 70)),
    ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)),
    ("motorcycle", 32, (0, 0, 230)),
    ("bicycle", 33, (119, 11, 32)),
)

# Synthetic shapes dataset (kmax demo, tests): (id, name, isthing, colour).
SYNTHETIC_CATEGORIES = (
    (1, "disc", 1, (220, 20, 60)),
    (2, "square", 1, (0, 130, 200)),
    (3, "triangle", 1, (245, 130, 48)),
    (4, "star", 1, (145, 30, 180)),
    (5, "sky", 0, (70, 130, 180)),
    (6, "ground", 0, (152, 251, 152)),
    (7, "wall", 0, (102, 102, 156)),
)


def _build(name: str) -> DatasetMeta:
    if name == "coco":
        cats = _load_asset("coco_panoptic_categories.json")
        return meta_from_categories("coco", cats, label_divisor=256, ignore_label=0)
    if name == "cityscapes":
        cats = [{"id": lid, "name": n, "isthing": int(t >= 11), "color": list(col)}
                for t, (n, lid, col) in enumerate(_CITYSCAPES)]
        extra = {"label_ids": tuple(lid for _, lid, _ in _CITYSCAPES),
                 # cityscapesScripts' panoptic evaluation names categories by label id.
                 "eval_ids": tuple(lid for _, lid, _ in _CITYSCAPES)}
        return meta_from_categories("cityscapes", cats, label_divisor=1000, ignore_label=255,
                                    extra=extra)
    if name == "ade20k":
        cats = _load_asset("ade20k_panoptic_categories.json")
        return meta_from_categories("ade20k", cats, label_divisor=1000, ignore_label=0)
    if name == "synthetic":
        cats = [{"id": i, "name": n, "isthing": t, "color": list(c)} for i, n, t, c in SYNTHETIC_CATEGORIES]
        return meta_from_categories("synthetic", cats, label_divisor=1000, ignore_label=0)
    raise KeyError(f"unknown dataset {name!r}; available: {', '.join(DATASET_NAMES)}")


DATASET_NAMES = ("coco", "cityscapes", "ade20k", "synthetic")


@lru_cache(maxsize=None)
def get_dataset_meta(name: str) -> DatasetMeta:
    """Return the :class:`DatasetMeta` of catalog dataset ``name``.

    Args:
        name: one of ``"coco"``, ``"cityscapes"``, ``"ade20k"``, ``"synthetic"``.

    Raises:
        KeyError: unknown name; the message lists the valid names.
    """
    return _build(name)
