"""Shared machinery of ``kmax prepare``: atomic outputs, resumption, progress.

Every output file is written through :mod:`kmax_deeplab.fileio` (a temporary file
renamed into place), so an interrupted run never leaves a half-written PNG or JSON
under its final name. Each converted image appends its annotation to a journal
(``.<json name>.partial.jsonl``); a second run takes every image whose journal entry
(or entry in an already written final JSON) exists *and* whose output files are valid
PNGs of the right size, and converts only the rest.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from kmax_deeplab.fileio import atomic_write_bytes, atomic_write_text

__all__ = ["PrepareError", "Journal", "bbox_of", "convert_all", "extract_folder", "save_png", "valid_png",
           "write_json"]


class PrepareError(RuntimeError):
    """Raw dataset files missing or malformed; the message names the file."""


def extract_folder(archive: Path, folder: str, dest: Path, *, progress: bool = True) -> bool:
    """Extract the members under ``folder/`` of a zip or tar ``archive`` into ``dest``.

    Nothing happens when ``dest/folder`` exists or ``archive`` does not. The members go
    to a hidden temporary folder first and ``folder`` is renamed into place at the end,
    so an interrupted extraction leaves no partial ``dest/folder``.

    Returns:
        whether it extracted.

    Raises:
        PrepareError: unreadable archive, or one without ``folder/``.
    """
    import shutil
    import tarfile
    import zipfile

    from tqdm import tqdm

    if (dest / folder).is_dir() or not archive.is_file():
        return False
    tmp = dest / f".{folder}.extracting"
    if tmp.exists():
        shutil.rmtree(tmp)
    prefix = f"{folder}/"
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = [m for m in zf.namelist() if m.startswith(prefix)]
                for m in tqdm(members, desc=f"extract {archive.name}", unit="file", disable=not progress):
                    zf.extract(m, tmp)
        else:
            with tarfile.open(archive) as tf:
                members = [m for m in tf.getmembers() if m.name.startswith(prefix)
                           and (m.isfile() or m.isdir())]
                for m in tqdm(members, desc=f"extract {archive.name}", unit="file", disable=not progress):
                    if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
                        tf.extract(m, tmp, filter="data")
                    else:
                        tf.extract(m, tmp)
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise PrepareError(f"{archive}: not a readable zip/tar archive ({exc})") from exc
    if not (tmp / folder).is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
        raise PrepareError(f"{archive} has no {prefix} folder")
    os.replace(tmp / folder, dest / folder)  # appears complete or not at all
    shutil.rmtree(tmp)
    return True


def save_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` (``[H, W]`` uint8/uint16 or ``[H, W, 3]`` uint8) as a PNG, atomically."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def valid_png(path: str | os.PathLike, size: tuple[int, int] | None = None) -> bool:
    """Whether ``path`` is a complete, decodable PNG of ``size`` ``(width, height)``."""
    try:
        with Image.open(path) as im:
            if im.format != "PNG" or (size is not None and im.size != tuple(size)):
                return False
            im.load()  # decodes everything: a truncated file fails here
    except (OSError, ValueError, SyntaxError):
        return False
    return True


def write_json(path: str | os.PathLike, data: Any, *, indent: int | None = None,
               sort_keys: bool = False) -> None:
    """Write ``data`` as JSON, atomically."""
    atomic_write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys))


class Journal:
    """Per-image records of one output JSON, for resuming an interrupted conversion.

    Args:
        final_json: the JSON the conversion writes at the end; if it exists, its
            ``annotations`` count as done (keyed by ``key_field``).
        key_field: the annotation field naming the image (``"image_id"``).
    """

    def __init__(self, final_json: Path, key_field: str = "image_id"):
        self.final_json = Path(final_json)
        self.path = self.final_json.with_name(f".{self.final_json.name}.partial.jsonl")
        self.key_field = key_field
        self.records: dict[Any, dict] = {}
        if self.final_json.is_file():
            try:
                data = json.loads(self.final_json.read_text(encoding="utf-8"))
                images = {img["id"]: img for img in data.get("images", [])}
                for ann in data.get("annotations", []):
                    self.records[ann[key_field]] = {"annotation": ann,
                                                    "image": images.get(ann[key_field])}
            except (OSError, ValueError, KeyError, AttributeError):
                self.records = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:  # a line cut by the interruption
                    continue
                self.records[rec["key"]] = rec
        self._fh = None

    def get(self, key: Any) -> dict | None:
        """The stored record of ``key`` (``{"annotation": ..., ...}``) or ``None``."""
        return self.records.get(key)

    def add(self, key: Any, record: dict) -> None:
        """Store ``record`` for ``key`` (appended and flushed to the journal file)."""
        record = dict(record, key=key)
        self.records[key] = record
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def finish(self) -> None:
        """Close and delete the journal (call after the final JSON is written)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self.path.exists():
            self.path.unlink()


def convert_all(items: Sequence[Any], key: Callable[[Any], Any],
                done: Callable[[Any, dict | None], bool], convert: Callable[[Any], dict],
                journal: Journal, *, desc: str, progress: bool = True) -> tuple[list[dict], int]:
    """Convert every item, skipping those already done with valid outputs.

    Args:
        items: the inputs, in output order.
        key: item -> journal key.
        done: (item, stored record or ``None``) -> whether the item's outputs are all
            there and valid (then the stored record, or ``{}``, is reused).
        convert: item -> record ``{"annotation": ..., ...}``; writes its outputs atomically.
        journal: the journal of this output JSON.
        desc: progress-bar label.

    Returns:
        ``(records in item order, number of items converted now)``.
    """
    from tqdm import tqdm

    records, done_now = [], 0
    for item in tqdm(items, desc=desc, unit="img", disable=not progress):
        k = key(item)
        rec = journal.get(k)
        if done(item, rec):
            records.append(rec if rec is not None else {})
            continue
        rec = convert(item)
        journal.add(k, rec)
        records.append(rec)
        done_now += 1
    return records, done_now


def bbox_of(mask: np.ndarray) -> list[int]:
    """``[x, y, width, height]`` of a non-empty ``[H, W]`` bool mask (panopticapi style)."""
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]

