"""The journal of a ``kmax predict`` folder run: finished work is never lost.

Each image's files (``<stem>.png``, ``<stem>_overlay.jpg``) are written atomically, then one
JSON line describing it is appended to ``predictions.journal.jsonl`` and flushed to disk
(``fsync``): a line in the journal means the image is done. ``predictions.json``
(COCO-panoptic: ``images``, ``annotations``, ``categories``) is rebuilt from the journal at
the end of a run *and* when a run stops on an error or an interruption, so it always lists
exactly the images whose files are complete. After a SIGKILL (nothing can run), ``kmax
predict --resume`` reads the journal, skips the finished images and continues; a torn last
line (killed mid-append) is dropped.

Journal lines (JSON objects, one per line)::

    {"journal": "kmax-predict-v1", "categories": [...], "overlay": true}   # header
    {"source": "/abs/in/a.jpg", "stem": "a", "image": {...}, "annotation": {...}}
    {"source": "/abs/in/b.png", "error": "b.png: unreadable or truncated image (...)"}

A failed image is recorded (and reported) but tried again by ``--resume``.

A used output folder is never mixed with a new run: :func:`open_journal` refuses a folder
that is not empty unless ``resume`` (continue the journal's run) or ``overwrite`` (remove
the files the previous run wrote, then start afresh).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from kmax_deeplab.engine.writers import PREDICTIONS_JSON
from kmax_deeplab.errors import InputError
from kmax_deeplab.fileio import atomic_write_text, remove_stale_tmp_files

__all__ = ["JOURNAL_NAME", "FORMAT", "PredictJournal", "check_output_folder", "open_journal"]

JOURNAL_NAME = "predictions.journal.jsonl"
FORMAT = "kmax-predict-v1"


def _read_lines(path: Path) -> list[dict]:
    """The complete, parsable JSON lines of ``path`` (a torn or garbled line is dropped)."""
    records = []
    for raw in path.read_bytes().split(b"\n"):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue  # torn by a kill mid-write
        if isinstance(rec, dict):
            records.append(rec)
    return records


class PredictJournal:
    """Append-only record of the finished images of one output folder.

    Use :func:`open_journal` to create one (it applies the folder policy).

    Attributes:
        output_dir: the prediction folder.
        categories: COCO-panoptic categories written into ``predictions.json``.
        done: ``{source path: record}`` of finished images (journal order).
        failed: ``{source path: error message}`` of images that failed in this or an
            earlier run and have not been done since.
    """

    def __init__(self, output_dir: Path, categories: Sequence[dict], overlay: bool,
                 records: Iterable[dict] = ()) -> None:
        self.output_dir = Path(output_dir)
        self.categories = [dict(c) for c in categories]
        self.overlay = overlay
        self.path = self.output_dir / JOURNAL_NAME
        self.done: dict[str, dict] = {}
        self.failed: dict[str, str] = {}
        for rec in records:
            self._remember(rec)
        self._file: Any = None

    def _remember(self, rec: dict) -> None:
        src = rec.get("source")
        if not isinstance(src, str):
            return
        if "error" in rec:
            if src not in self.done:
                self.failed[src] = str(rec["error"])
        elif isinstance(rec.get("annotation"), dict) and isinstance(rec.get("image"), dict):
            self.done[src] = rec
            self.failed.pop(src, None)

    def _start(self, existing: list[dict]) -> None:
        """(Re)write the journal: header plus ``existing`` records, atomically, then open it."""
        header = {"journal": FORMAT, "categories": self.categories, "overlay": self.overlay}
        text = "".join(json.dumps(r) + "\n" for r in [header, *existing])
        atomic_write_text(self.path, text)
        self._file = open(self.path, "a", encoding="utf-8")

    def _append(self, rec: dict) -> None:
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._remember(rec)

    @staticmethod
    def key(source: str | Path) -> str:
        """The journal key of an input file: its absolute path."""
        return str(Path(source).absolute())

    def is_done(self, source: str | Path) -> bool:
        """Whether ``source`` was finished (in this run or a resumed one)."""
        return self.key(source) in self.done

    def stems(self) -> set[str]:
        """Output stems already used by finished images."""
        return {str(r["stem"]) for r in self.done.values() if "stem" in r}

    def commit(self, source: str | Path, stem: str, image: dict, annotation: dict) -> None:
        """Record a finished image (its files must already be complete on disk)."""
        self._append({"source": self.key(source), "stem": stem, "image": image,
                      "annotation": annotation})

    def record_failure(self, source: str | Path, message: str) -> None:
        """Record that ``source`` failed (reported; retried by ``--resume``)."""
        self._append({"source": self.key(source), "error": message})

    def write_predictions_json(self) -> Path:
        """Write ``predictions.json`` listing exactly the finished images (atomically)."""
        records = list(self.done.values())
        data = {"images": [r["image"] for r in records],
                "annotations": [r["annotation"] for r in records],
                "categories": self.categories}
        path = self.output_dir / PREDICTIONS_JSON
        atomic_write_text(path, json.dumps(data))
        return path

    def close(self) -> None:
        """Close the journal file (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _previous_outputs(output_dir: Path, records: list[dict]) -> list[Path]:
    """Files a previous run wrote, as named by its journal or its ``predictions.json``."""
    stems = {str(r["stem"]) for r in records if "stem" in r}
    pj = output_dir / PREDICTIONS_JSON
    if pj.is_file():
        try:
            data = json.loads(pj.read_text(encoding="utf-8"))
            for ann in data.get("annotations", []):
                name = str(ann.get("file_name", ""))
                if name.endswith(".png"):
                    stems.add(name[:-4])
        except (OSError, ValueError, AttributeError):
            pass
    files = [output_dir / JOURNAL_NAME, pj]
    for stem in stems:
        if "/" in stem or "\\" in stem or stem in ("", ".", ".."):
            continue  # never follow a path out of the folder
        files += [output_dir / f"{stem}.png", output_dir / f"{stem}_overlay.jpg"]
    return [f for f in files if f.is_file()]


def check_output_folder(output_dir: str | Path, *, resume: bool = False,
                        overwrite: bool = False) -> None:
    """The cheap part of :func:`open_journal`'s policy, to run before a model is built.

    Raises:
        InputError: as :func:`open_journal` would for a used folder or conflicting options.
    """
    out = Path(output_dir)
    if resume and overwrite:
        raise InputError("--resume and --overwrite: choose one",
                         hint="--resume continues the run in the folder, --overwrite replaces it")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: the output path exists and is not a folder")
    if resume or overwrite or not out.is_dir():
        return
    used = sorted(p.name for p in out.iterdir())
    if used:
        what = "holds a previous kmax predict run" if (out / JOURNAL_NAME).is_file() or \
            (out / PREDICTIONS_JSON).is_file() else "is not empty"
        raise InputError(
            f"{out}: the output folder {what} ({len(used)} entries, e.g. {used[0]})",
            hint="--resume continues that run, --overwrite removes its files, or choose "
                 "another --output")


def open_journal(output_dir: str | Path, categories: Sequence[dict], *, overlay: bool = True,
                 resume: bool = False, overwrite: bool = False) -> PredictJournal:
    """Apply the output-folder policy and return the journal to write into.

    * a missing or empty folder: a fresh run;
    * ``resume``: continue the run recorded in the folder's journal (a torn last line is
      dropped, stale ``.tmp`` files removed); without a journal the folder must be empty;
    * ``overwrite``: remove the journal, ``predictions.json`` and every PNG/overlay they
      name, and stale ``.tmp`` files, then start afresh (other files are left alone and
      never listed in ``predictions.json``);
    * otherwise a non-empty folder is refused.

    Raises:
        InputError: a used folder without ``resume``/``overwrite``; ``resume`` on a folder
            written for other categories or without a journal; both options at once.
        OSError: the folder cannot be created or written (read-only, full disk).
    """
    out = Path(output_dir)
    check_output_folder(out, resume=resume, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    journal_path = out / JOURNAL_NAME
    records = _read_lines(journal_path) if journal_path.is_file() else []
    header = records[0] if records and records[0].get("journal") == FORMAT else None
    body = records[1:] if header is not None else records
    if resume and journal_path.is_file():
        if header is None:
            raise InputError(f"{journal_path}: not a kmax predict journal (no header)",
                             hint="use --overwrite to replace the folder's content")
        if [dict(c) for c in header.get("categories", [])] != [dict(c) for c in categories]:
            raise InputError(f"{out}: was written by a model with other categories",
                             hint="resume with the same model, or use --overwrite")
        remove_stale_tmp_files(out)
        journal = PredictJournal(out, categories, bool(header.get("overlay", overlay)), body)
        journal.overlay = overlay
        journal._start([r for r in body if "source" in r])
        return journal
    used = sorted(p.name for p in out.iterdir())
    if used and overwrite:
        for f in _previous_outputs(out, body):
            f.unlink()
        remove_stale_tmp_files(out)
    elif used:  # resume without a journal
        raise InputError(f"{out}: --resume, but the folder has no {JOURNAL_NAME} and is not empty",
                         hint="--overwrite removes a previous run's files, or choose another "
                              "--output")
    journal = PredictJournal(out, categories, overlay)
    journal._start([])
    return journal
