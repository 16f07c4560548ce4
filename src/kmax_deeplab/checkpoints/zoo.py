"""The model zoo: official kMaX-DeepLab checkpoints, downloaded, converted once, cached.

:func:`get_zoo_checkpoint` downloads the official file (urllib, tqdm progress bar),
checks its SHA-256 when the table knows it, unpacks TF archives safely, converts to the
native format (:func:`~kmax_deeplab.checkpoints.native.save_native`) and caches the
result under ``$KMAX_CACHE`` or ``~/.cache/kmax_deeplab``. Nothing partial is ever left
under the final cache name.

No SHA-256 of the official archives was available when this table was written (the
publishers do not list them), so ``sha256`` is None everywhere and a download is verified
only by its successful, strict conversion (every tensor consumed, every model entry
produced, every shape equal). Google-Drive files (bytedance, COCONut) may refuse scripted
downloads; then download them in a browser and use ``kmax convert``.

MaX-DeepLab-S/-L COCO checkpoints (deeplab2, 400k steps) convert with the MaX importer
(``checkpoints/deeplab2_max.py``) through the MaX family row.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

__all__ = ["ZooEntry", "ZOO", "ZooError", "cache_root", "get_zoo_checkpoint", "convert_file", "safe_extract"]

_TF = "https://storage.googleapis.com/gresearch/tf-deeplab/checkpoint/"


def _gdrive(file_id: str) -> str:
    return f"https://drive.google.com/uc?export=download&id={file_id}"


@dataclass(frozen=True)
class ZooEntry:
    """One official checkpoint.

    Attributes:
        name: zoo name (``kmax predict --model NAME``).
        url: where the publisher serves it.
        source: ``"deeplab2"`` (TF ``.tar.gz``), ``"bytedance"`` (detectron2 ``.pth``),
            ``"mmdet"`` (original K-Net ``.pth``, ``{"state_dict", "meta"}``) or ``"mmseg"``
            (semantic K-Net ``.pth``, same wrapper).
        dataset: ``coco``, ``cityscapes``, ``ade20k``.
        backbone: backbone name of our model.
        preset: config preset that builds the matching model.
        pq: the published COCO val number of ``metric`` (spec §6 / knet.md §9).
        sha256: hex digest of the downloaded file, or None when unknown.
        note: provenance remark.
        metric: ``"PQ"`` (panoptic), ``"mask AP"`` (instance) or ``"mIoU"`` (semantic models).
    """

    name: str
    url: str
    source: str
    dataset: str
    backbone: str
    preset: str
    pq: float
    sha256: str | None = None
    note: str = ""
    metric: str = "PQ"


def _tf(name: str, archive: str, dataset: str, backbone: str, preset: str, pq: float, note: str = "") -> ZooEntry:
    return ZooEntry(name, f"{_TF}{archive}.tar.gz", "deeplab2", dataset, backbone, preset, pq, None, note)


def _bd(name: str, file_id: str, dataset: str, backbone: str, preset: str, pq: float, note: str = "") -> ZooEntry:
    return ZooEntry(name, _gdrive(file_id), "bytedance", dataset, backbone, preset, pq, None, note)


_ENTRIES = [
    # deeplab2 g3doc/projects/kmax_deeplab.md (TF, converted into the deeplab2-layout R50 / ConvNeXt);
    # every one builds deeplab2's network (a *_deeplab2 preset: model.reference = deeplab2).
    _tf("kmax_r50_coco", "kmax_resnet50_coco_train", "coco", "resnet50_deeplab2", "coco/kmax_r50_deeplab2", 53.0),
    _tf("kmax_convnext_tiny_coco", "kmax_convnext_tiny_coco_train", "coco", "convnext_tiny",
        "coco/kmax_convnext_tiny_deeplab2", 55.3),
    _tf("kmax_convnext_small_coco", "kmax_convnext_small_coco_train", "coco", "convnext_small",
        "coco/kmax_convnext_small_deeplab2", 56.3),
    _tf("kmax_convnext_base_coco", "kmax_convnext_base_coco_train", "coco", "convnext_base",
        "coco/kmax_convnext_base_deeplab2", 57.2),
    _tf("kmax_convnext_large_coco", "kmax_convnext_large_coco_train", "coco", "convnext_large",
        "coco/kmax_convnext_large_deeplab2", 57.9),
    _tf("kmax_convnext_large_coco_unlabeled", "kmax_convnext_large_coco_train_unlabeled", "coco", "convnext_large",
        "coco/kmax_convnext_large_deeplab2", 58.1, "trained with the COCO unlabeled set"),
    _tf("kmax_r50_cityscapes", "kmax_resnet50_cityscapes_train", "cityscapes", "resnet50_deeplab2",
        "cityscapes/kmax_r50_deeplab2", 64.3),
    _tf("kmax_convnext_tiny_cityscapes", "kmax_convnext_tiny_cityscapes_train", "cityscapes", "convnext_tiny",
        "cityscapes/kmax_convnext_tiny_deeplab2", 66.3),
    _tf("kmax_convnext_small_cityscapes", "kmax_convnext_small_cityscapes_train", "cityscapes", "convnext_small",
        "cityscapes/kmax_convnext_small_deeplab2", 67.3),
    _tf("kmax_convnext_base_cityscapes", "kmax_convnext_base_cityscapes_train", "cityscapes", "convnext_base",
        "cityscapes/kmax_convnext_base_deeplab2", 68.0),
    _tf("kmax_convnext_large_cityscapes", "kmax_convnext_large_cityscapes_train", "cityscapes", "convnext_large",
        "cityscapes/kmax_convnext_large_deeplab2", 68.4),
    _tf("kmax_convnext_large_ade20k_1281", "kmax_convnext_large_res1281_ade20k_train", "ade20k", "convnext_large",
        "ade20k/kmax_convnext_large_1281_deeplab2", 50.9, "BD reports PQ 50.662 for this file ported"),
    # deeplab2 g3doc/projects/max_deeplab.md (TF MaX-DeepLab, 400k-step checkpoints; spec max_deeplab.md §6).
    _tf("max_deeplab_s_coco", "max_deeplab_s_os16_res641_400k_coco_train", "coco", "axial_resnet50",
        "coco/max_deeplab_s_641", 47.0, "MaX-DeepLab-S 641x641, 400k steps"),
    _tf("max_deeplab_s_1025_coco", "max_deeplab_s_os16_res1025_400k_coco_train", "coco", "axial_resnet50",
        "coco/max_deeplab_s_1025", 49.0, "MaX-DeepLab-S 1025x1025, 400k steps"),
    _tf("max_deeplab_l_coco", "max_deeplab_l_os16_res1025_400k_coco_train", "coco", "wide_resnet41",
        "coco/max_deeplab_l_1025", 51.3, "MaX-DeepLab-L 1025x1025, 400k steps"),
    # bytedance/kmax-deeplab README (PyTorch-trained, detectron2 .pth on Google Drive).
    _bd("kmax_r50_coco_bd", "1YB_5dct0U7ys2KTJNjDIqXLSZneWTyr-", "coco", "resnet50", "coco/kmax_r50", 53.3),
    _bd("kmax_convnext_tiny_coco_bd", "1KAEztHbVG3Pvi6JnrCMtRYTgSFi7zr47", "coco", "convnext_tiny",
        "coco/kmax_convnext_tiny", 55.5),
    _bd("kmax_convnext_small_coco_bd", "1yRmGWrpUyXCL-QgAm00tRU981RhX2gG2", "coco", "convnext_small",
        "coco/kmax_convnext_small", 56.7),
    _bd("kmax_convnext_base_coco_bd", "18fWcWxeBw7HuKU-llu0hanBwaVYd7nB4", "coco", "convnext_base",
        "coco/kmax_convnext_base", 57.2),
    _bd("kmax_convnext_large_coco_bd", "1b6rEnKw4PNTdqSdWpmb0P9dsvN0pkOiN", "coco", "convnext_large",
        "coco/kmax_convnext_large", 57.9),
    _bd("kmax_r50_cityscapes_bd", "1v1bsifuF21ft7wMwgjJNSJu5JBowoNta", "cityscapes", "resnet50",
        "cityscapes/kmax_r50", 63.5),
    _bd("kmax_convnext_large_cityscapes_bd", "1dqY3fts8caCxjZCiHhFJKCCQMkDUWaoW", "cityscapes", "convnext_large",
        "cityscapes/kmax_convnext_large", 68.4),
    _bd("kmax_r50_ade20k_1281_bd", "1ayqi5WyzHzVJPOr4odZ08Iz2Z7mqTEoy", "ade20k", "resnet50",
        "ade20k/kmax_r50_1281", 42.2),
    _bd("kmax_convnext_large_ade20k_1281_bd", "12GQff3b4tozxGV2-L4wTUBKkmd7-aW5G", "ade20k", "convnext_large",
        "ade20k/kmax_convnext_large_1281", 50.0),
    # bytedance/coconut_cvpr2024 tutorials/kmaxdeeplab_panoptic (same layout as bytedance).
    _bd("kmax_convnext_large_coconut_bd", "14S2QrJqnlbeSK2qMyD3i01eoup4XsVOq", "coco", "convnext_large",
        "coco/kmax_convnext_large", 64.4, "COCONut-trained; PQ on relabeled COCO-val, not COCO val"),
]

# ZwwWayne/K-Net README (original mmdet .pth files). The filename suffix is the first 8 hex
# digits of the file's SHA-256 (mmcv's publish convention), not checked here. The instance
# ms-3x R-50 (37.8 AP) and R-101 (39.2 AP) rows of that README link the folder
# https://download.openmmlab.com/mim-example/knet/, not a file: those two checkpoints were never
# released (ZwwWayne/K-Net issue #17, maintainer 2021-12-16: "We have not released the model"),
# so they have no zoo entry; their presets still train them. The R-101-DCN files use mmcv's
# deformable conv v1 (``type='DCN'``), which the ``coco/knet_r101_dcn_*`` presets build.
_KNET = "https://download.openmmlab.com/mim-example/knet/det/knet/"
_ENTRIES += [
    ZooEntry("knet_r50_fpn_1x_coco_panoptic",
             _KNET + "knet_s3_r50_fpn_1x_coco-panoptic/knet_s3_r50_fpn_1x_coco-panoptic_20211017_151750-395fbcba.pth",
             "mmdet", "coco", "resnet50", "coco/knet_r50_fpn_1x", 44.3),
    ZooEntry("knet_r50_fpn_ms3x_coco_panoptic",
             _KNET + "knet_s3_r50_fpn_ms-3x_coco-panoptic/knet_s3_r50_fpn_ms-3x_coco-panoptic_20211017_054613-4375b8be.pth",
             "mmdet", "coco", "resnet50", "coco/knet_r50_fpn_ms3x", 47.1),
    ZooEntry("knet_r101_fpn_ms3x_coco_panoptic",
             _KNET + "knet_s3_r101_fpn_ms-3x_coco-panoptic/knet_s3_r101_fpn_ms-3x_coco-panoptic_20211017_054501-9c600b0c.pth",
             "mmdet", "coco", "resnet101", "coco/knet_r101_fpn_ms3x", 48.4),
    ZooEntry("knet_swin_l_fpn_ms3x_coco_panoptic",
             _KNET + "knet_s3_swin-l_fpn_ms-3x_16x2_coco-panoptic/"
             "knet_s3_swin-l_fpn_ms-3x_16x2_coco-panoptic_20211020_062341-62f3bbff.pth",
             "mmdet", "coco", "swin_l", "coco/knet_swin_l_fpn_ms3x", 54.6,
             note="COCO val; 55.2 on test-dev"),
    ZooEntry("knet_r50_fpn_1x_coco_instance",
             _KNET + "knet_s3_r50_fpn_1x_coco/knet_s3_r50_fpn_1x_coco_20211016_113017-8a8645d4.pth",
             "mmdet", "coco", "resnet50", "coco/knet_r50_fpn_1x_instance", 34.0, metric="mask AP"),
    ZooEntry("knet_r101_dcn_fpn_ms3x_coco_panoptic",
             _KNET + "knet_s3_r101_dcn-c3-c5_fpn_ms-3x_coco-panoptic/"
                     "knet_s3_r101_dcn-c3-c5_fpn_ms-3x_coco-panoptic_20211019_191549-6d13fab7.pth",
             "mmdet", "coco", "resnet101", "coco/knet_r101_dcn_fpn_ms3x", 49.6),
    ZooEntry("knet_r101_dcn_fpn_ms3x_coco_instance",
             _KNET + "knet_s3_r101_dcn-c3-c5_fpn_ms-3x_coco/knet_s3_r101_dcn-c3-c5_fpn_ms-3x_coco_20211017_054515-163a3126.pth",
             "mmdet", "coco", "resnet101", "coco/knet_r101_dcn_fpn_ms3x_instance", 40.5, metric="mask AP"),
]

# Semantic K-Net on ADE20K. The K-Net README (ZwwWayne/K-Net @5e50ee5) lists R-50 FCN / PSPNet /
# DeepLabv3 / UPerNet at 43.3 / 43.9 / 44.6 / 43.6 mIoU with empty download links: those files were
# never released. The released ADE20K K-Net weights are mmsegmentation's re-training of the same
# configs (configs/knet/README.md, mmseg v0.5 model zoo), in the same key layout (checked against
# mmseg 0.30's own K-Net configs built on CPU: every key and shape converts strictly), with their
# own published single-scale mIoU. mmseg's UPerNet is 512 channels wide (the original config: 256):
# presets ade20k/knet_*_upernet_*_mmseg. The Swin-T/-L files keep mmseg's Swin names, which are ours.
_MMSEG_KNET = "https://download.openmmlab.com/mmsegmentation/v0.5/knet/"


def _mmseg_knet(head: str, stamp: str, miou: float, knet_readme: float, preset: str | None = None,
                backbone: str = "r50-d8", crop: int = 512) -> ZooEntry:
    folder = f"knet_s3_{head}_{backbone}_8x2_{crop}x{crop}_adamw_80k_ade20k"
    ours = {"r50-d8": "resnet50_v1c", "swin-t": "swin_t", "swin-l": "swin_l"}[backbone]
    name = (f"knet_r50_d8_{head}_ade20k" if backbone == "r50-d8"
            else f"knet_{ours}_{head}_{crop}_ade20k")
    return ZooEntry(name, f"{_MMSEG_KNET}{folder}/{folder}_{stamp}.pth", "mmseg", "ade20k",
                    ours, preset or f"ade20k/knet_r50_d8_{head}_512", miou,
                    note=f"mmsegmentation's training of the K-Net config (K-Net README: {knet_readme} mIoU, "
                         "checkpoint never released)", metric="mIoU")


_ENTRIES += [
    _mmseg_knet("fcn", "20220228_043751-abcab920", 43.60, 43.3),
    _mmseg_knet("pspnet", "20220228_054634-d2c72240", 44.18, 43.9),
    _mmseg_knet("deeplabv3", "20220228_041642-00c8fbeb", 45.06, 44.6),
    _mmseg_knet("upernet", "20220304_125657-215753b0", 43.45, 43.6, preset="ade20k/knet_r50_d8_upernet_512_mmseg"),
    _mmseg_knet("upernet", "20220303_133059-7545e1dc", 45.84, 45.4, preset="ade20k/knet_swin_t_upernet_512_mmseg",
                backbone="swin-t"),
    _mmseg_knet("upernet", "20220303_154559-d8da9a90", 52.05, 52.0, preset="ade20k/knet_swin_l_upernet_512_mmseg",
                backbone="swin-l"),
    _mmseg_knet("upernet", "20220720_165636-cbcaed32", 52.46, 52.7, preset="ade20k/knet_swin_l_upernet_640_mmseg",
                backbone="swin-l", crop=640),
]

#: name -> entry
ZOO: Mapping[str, ZooEntry] = {e.name: e for e in _ENTRIES}


class ZooError(RuntimeError):
    """A zoo checkpoint could not be downloaded, verified or converted."""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$KMAX_CACHE``, else ``~/.cache/kmax_deeplab``."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("KMAX_CACHE") or Path.home() / ".cache" / "kmax_deeplab")


_CONVERTER = {"deeplab2": "deeplab2", "bytedance": "detectron2", "mmdet": "mmdet"}


def _manual_hint(entry: ZooEntry) -> str:
    kind = _CONVERTER[entry.source]
    return (f"download {entry.url} yourself, then run\n"
            f"  kmax convert --from {kind} FILE ./{entry.name} --config {entry.preset}\n"
            f"  kmax predict IMAGES... -o preds/ --weights ./{entry.name}")


def _download(url: str, dst: Path, progress: bool) -> str:
    """Stream ``url`` into ``dst``; returns the SHA-256 hex digest."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as resp, open(dst, "wb") as f:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dst.name, disable=not progress) as bar:
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                f.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        if total is not None and f.tell() != total:
            raise ZooError(f"{url}: download truncated ({f.tell()} of {total} bytes)")
    return digest.hexdigest()


def safe_extract(archive: Path, dst: Path) -> None:
    """Extract a tar archive, refusing absolute paths, ``..``, links and special files.

    Raises:
        ZooError: a member would land outside ``dst`` or is not a plain file/folder.
    """
    dst = dst.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                target = (dst / m.name).resolve()
                if os.path.isabs(m.name) or ".." in Path(m.name).parts or not str(target).startswith(str(dst)):
                    raise ZooError(f"{archive}: refusing unsafe path {m.name!r} in archive")
                if not (m.isfile() or m.isdir()):
                    raise ZooError(f"{archive}: refusing link or special file {m.name!r} in archive")
            for m in members:
                tar.extract(m, dst, set_attrs=False)
    except tarfile.TarError as e:
        raise ZooError(f"{archive}: not a valid tar archive ({e})") from None


def convert_file(src: Path, dst: Path, *, source: str, preset: str, strict: bool = True,
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Convert a foreign checkpoint into a native folder ``dst`` (see ``kmax convert``).

    Args:
        src: TF checkpoint prefix/folder (``deeplab2``), ``.pth``/``.pkl`` (``detectron2``),
            or an ImageNet backbone file (``imagenet``; only the backbone is replaced,
            the rest of the model keeps its initialisation).
        dst: output folder; written only after a successful conversion (atomic rename).
        source: an importer of the config's model family (its ``importers`` in the family
            table; kMaX: ``deeplab2``, ``detectron2`` or ``imagenet``).
        preset: config preset (or YAML path) that builds the target model. With
            ``source="deeplab2"`` a kMaX config's ``model.reference`` is set to ``"deeplab2"``
            (with a warning when it said otherwise): a deeplab2 checkpoint is deeplab2's
            network. The safetensors metadata records ``source`` and ``reference`` (see
            :func:`~kmax_deeplab.checkpoints.native.upgrade_deeplab2_reference`).
        strict: see the converters.

    Raises:
        CheckpointMismatchError, TFCheckpointError, UnsafeCheckpointError, ValueError.
    """
    from kmax_deeplab.checkpoints.native import save_native
    from kmax_deeplab.config import load_config
    from kmax_deeplab.modeling.families import family_of

    cfg = load_config(preset)
    if source == "deeplab2" and getattr(cfg.model, "reference", "deeplab2") != "deeplab2":
        # A deeplab2 checkpoint is deeplab2's network: its weights predict correctly only with
        # the deeplab2 behaviour switches (docs/parity.md, "Behaviour switches").
        warnings.warn(f"kmax convert: config {preset!r} has model.reference={cfg.model.reference!r}; "
                      "a deeplab2 checkpoint needs deeplab2's network, so the converted config gets "
                      "model.reference='deeplab2'", UserWarning, stacklevel=2)
        cfg.model.reference = "deeplab2"
    family = family_of(cfg)
    importer = family.importers.get(source)
    if importer is None:
        raise ValueError(f"model family {family.name!r} has no {source!r} checkpoint importer "
                         f"(it has: {', '.join(sorted(family.importers)) or 'none'})")
    sd = importer(src, family.build_model(cfg), cfg, strict=strict)
    from kmax_deeplab.checkpoints.checksums import check_finite

    check_finite(sd, str(src))  # NaN/inf weights would predict nothing, silently
    meta = {"source": source, "original": Path(src).name, **(metadata or {})}
    if getattr(cfg.model, "reference", None) is not None:
        meta["reference"] = cfg.model.reference
    dst = Path(dst)
    if dst.exists():
        raise FileExistsError(f"{dst}: already exists; choose a new output folder")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent if dst.parent.exists() else None))
    try:
        from kmax_deeplab.fileio import current_umask

        os.chmod(tmp, 0o777 & ~current_umask())  # the folder a plain mkdir makes, not mkdtemp's 0700
        save_native(tmp, sd, cfg, meta)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dst


def get_zoo_checkpoint(name: str, *, cache_dir: str | Path | None = None, url: str | None = None,
                       progress: bool = True) -> Path:
    """Download, verify, convert and cache an official checkpoint; return its native folder.

    Args:
        name: a key of :data:`ZOO` (``kmax_r50_coco``, ...).
        cache_dir: cache root (default ``$KMAX_CACHE`` or ``~/.cache/kmax_deeplab``).
        url: override the download URL (a mirror, or ``file://`` of a local copy).
        progress: show a tqdm progress bar.

    Returns:
        ``cache_root/name``, a folder for :func:`~kmax_deeplab.checkpoints.native.load_native`.

    Raises:
        KeyError: unknown name (the message lists the zoo).
        ZooError: offline, HTTP error, SHA-256 mismatch or a failed conversion; the
            message says how to convert a local file instead. No cache entry is left.
    """
    if name not in ZOO:
        raise KeyError(f"unknown zoo checkpoint {name!r}; available: {', '.join(sorted(ZOO))}")
    entry = ZOO[name]
    root = cache_root(cache_dir)
    final = root / name
    if (final / "model.safetensors").is_file() and (final / "config.yaml").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        src_url = url or entry.url
        fname = src_url.rstrip("/").split("/")[-1].split("?")[0] or "download"
        archive = work / ("download.tar.gz" if entry.source == "deeplab2" else "download.pth")
        try:
            digest = _download(src_url, archive, progress)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise ZooError(f"cannot download {name} from {src_url} ({e}); {_manual_hint(entry)}") from None
        if entry.sha256 is not None and digest != entry.sha256:
            raise ZooError(f"{name}: SHA-256 mismatch for {fname} (got {digest}, expected {entry.sha256}); "
                           f"the download is corrupt or changed. {_manual_hint(entry)}")
        if entry.source == "deeplab2":
            extracted = work / "extracted"
            safe_extract(archive, extracted)
            src = extracted
        else:
            src = archive
        try:
            convert_file(src, work / "native", source=_CONVERTER[entry.source],
                         preset=entry.preset, metadata={"zoo_name": name, "url": src_url, "sha256": digest})
        except Exception as e:
            raise ZooError(f"{name}: the downloaded file does not convert ({e}). {_manual_hint(entry)}") from e
        if final.exists():  # a concurrent process finished first
            return final
        os.replace(work / "native", final)
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)
