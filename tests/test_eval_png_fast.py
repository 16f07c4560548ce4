"""The fast PNG path gives exactly Pillow's ids, with and without its accelerators,
and hands every file it does not handle (other modes, damage) back to Pillow."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from kmax_deeplab.evaluation import PanopticEvaluationError, png_fast, read_panoptic_png
from kmax_deeplab.evaluation.png_fast import decode_panoptic_png_ids

from conftest import SAMPLE_SETS, TEST_DATA

BACKENDS = ["libdeflate+libspng", "zlib+libspng", "libdeflate+pillow", "zlib+pillow"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Run the fast path with each combination of inflater and row decoder."""
    inflater, rows = request.param.split("+")
    if inflater == "libdeflate":
        pytest.importorskip("deflate")
    else:
        monkeypatch.setattr(png_fast, "_deflate", None)
        monkeypatch.setattr(png_fast, "_crc32", zlib.crc32)
    if rows == "libspng":
        pytest.importorskip("pyspng")
    else:
        monkeypatch.setattr(png_fast, "_pyspng", None)
    return request.param


def pillow_ids(data_or_path) -> np.ndarray:
    """Oracle: Pillow's samples packed as R + 256 G + 65536 B (panopticapi rgb2id)."""
    import io

    src = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    with Image.open(src) as img:
        a = np.asarray(img).astype(np.uint64)
    return (a[..., 0] + 256 * a[..., 1] + 65536 * a[..., 2]).astype(np.uint32)


# ----------------------------------------------------------------- test encoder
def _paeth(a, b, c):
    a, b, c = (x.astype(np.int16) for x in (a, b, c))
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c)).astype(np.uint8)


def _filter_row(kind, row, above, bpp):
    """PNG spec §9 forward filter of one scanline (uint8 arithmetic mod 256)."""
    left = np.concatenate([np.zeros(bpp, np.uint8), row[:-bpp]])
    upleft = np.concatenate([np.zeros(bpp, np.uint8), above[:-bpp]])
    pred = {
        0: np.zeros_like(row),
        1: left,
        2: above,
        3: ((left.astype(np.uint16) + above) // 2).astype(np.uint8),
        4: _paeth(left, above, upleft),
    }[kind]
    return (row - pred).astype(np.uint8)


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def encode_png(pixels: np.ndarray, kinds, *, extra_chunks=(), idat_parts=1, level=6) -> bytes:
    """Our own PNG writer with a chosen filter type per row (Pillow cannot choose)."""
    h, w, bpp = pixels.shape
    colour = {3: 2, 4: 6}[bpp]
    rows = pixels.reshape(h, w * bpp)
    scan = bytearray()
    above = np.zeros(w * bpp, np.uint8)
    for r in range(h):
        scan.append(kinds[r])
        scan += _filter_row(kinds[r], rows[r], above, bpp).tobytes()
        above = rows[r]
    z = zlib.compress(bytes(scan), level)
    cut = np.linspace(0, len(z), idat_parts + 1).astype(int)
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))
    out += b"".join(extra_chunks)
    out += b"".join(_chunk(b"IDAT", z[a:b]) for a, b in zip(cut[:-1], cut[1:]))
    return out + _chunk(b"IEND", b"")


def panoptic_like(rng, h, w, bpp, noise=0.02):
    """Piecewise-constant random colours with a sprinkling of random pixels."""
    cells = rng.integers(0, 256, (4, 5, bpp), dtype=np.uint8)
    img = np.repeat(np.repeat(cells, -(-h // 4), 0), -(-w // 5), 1)[:h, :w].copy()
    mask = rng.random((h, w)) < noise
    img[mask] = rng.integers(0, 256, (int(mask.sum()), bpp), dtype=np.uint8)
    return img


# ----------------------------------------------------------------- parity
SAMPLE_PNGS = sorted(str(p.relative_to(TEST_DATA)) for root in SAMPLE_SETS for p in root.rglob("*.png"))


@pytest.mark.parametrize("rel", SAMPLE_PNGS)
def test_real_pngs_match_pillow(rel, backend):
    data = (TEST_DATA / rel).read_bytes()
    ids = decode_panoptic_png_ids(data)
    with Image.open(TEST_DATA / rel) as img:
        handled = img.mode in ("RGB", "RGBA")
    if not handled:  # e.g. the 2-channel (LA) COCO examples: Pillow's business
        assert ids is None
        return
    assert ids is not None, f"{rel}: the fast path should handle an 8-bit {img.mode} PNG"
    assert ids.dtype == np.uint32
    np.testing.assert_array_equal(ids, pillow_ids(data))
    np.testing.assert_array_equal(read_panoptic_png(TEST_DATA / rel),
                                  read_panoptic_png(TEST_DATA / rel, fast=False))


@pytest.mark.parametrize("bpp", [3, 4])
@pytest.mark.parametrize("layout", ["each", "runs", "single_row", "single_col"])
def test_every_filter_type_matches_pillow(bpp, layout, backend):
    rng = np.random.default_rng(17 * bpp + len(layout))
    h, w = {"single_row": (1, 29), "single_col": (31, 1)}.get(layout, (40, 23))
    img = panoptic_like(rng, h, w, bpp)
    if layout == "runs":  # long runs of one type, then every type switch
        kinds = np.repeat(rng.integers(0, 5, 8), 5)[:h]
    else:
        kinds = rng.integers(0, 5, h)
    kinds[: min(5, h)] = np.arange(min(5, h))  # each type also on the first rows
    data = encode_png(img, kinds.tolist(), idat_parts=3)
    expected = pillow_ids(data)
    # The oracle decodes the pixels we encoded (checks the test encoder itself).
    np.testing.assert_array_equal(
        expected, img[..., 0] + 256 * img[..., 1].astype(np.uint32) + 65536 * img[..., 2].astype(np.uint32))
    np.testing.assert_array_equal(decode_panoptic_png_ids(data), expected)


def test_pillow_written_ids_and_harmless_chunks(tmp_path, backend):
    rng = np.random.default_rng(3)
    img = panoptic_like(rng, 50, 70, 3, noise=0.3)
    path = tmp_path / "a.png"
    Image.fromarray(img).save(path, pnginfo=_text_info(), transparency=(1, 2, 3))
    data = path.read_bytes()
    assert b"tRNS" in data and b"tEXt" in data
    np.testing.assert_array_equal(decode_panoptic_png_ids(data), pillow_ids(data))
    rgba = np.concatenate([img, rng.integers(0, 256, (50, 70, 1), dtype=np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(path)
    np.testing.assert_array_equal(decode_panoptic_png_ids(path.read_bytes()), pillow_ids(path))


def _text_info():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", "panoptic")
    return info


@pytest.mark.parametrize("mode", ["L", "P", "I;16", "1"])
def test_other_modes_go_to_pillow(tmp_path, mode):
    rng = np.random.default_rng(5)
    a = rng.integers(0, 200, (9, 11), dtype=np.uint8)
    img = Image.fromarray(a)
    img = img.convert(mode) if mode != "I;16" else Image.fromarray(a.astype(np.uint16) * 300)
    path = tmp_path / "x.png"
    img.save(path)
    assert decode_panoptic_png_ids(path.read_bytes()) is None
    # read_panoptic_png then gives Pillow's values as before (ids = the samples).
    expected = np.asarray(Image.open(path))
    expected = expected[..., 0] if expected.ndim == 3 else expected
    np.testing.assert_array_equal(read_panoptic_png(path), expected.astype(np.uint32))


def test_two_channel_png_is_a_clear_error(tmp_path):
    path = tmp_path / "la.png"
    Image.fromarray(np.zeros((4, 5), np.uint8)).convert("LA").save(path)
    assert decode_panoptic_png_ids(path.read_bytes()) is None
    with pytest.raises(PanopticEvaluationError, match=r"la\.png \(image 3\) has 2 channels"):
        read_panoptic_png(path, image_id=3)


def test_damaged_or_unusual_files_go_to_pillow(tmp_path, backend):
    rng = np.random.default_rng(9)
    img = panoptic_like(rng, 12, 10, 3)
    good = encode_png(img, [4] * 12)
    assert decode_panoptic_png_ids(good) is not None
    ihdr_at = good.index(b"IHDR") - 4

    def with_ihdr(**change):
        fields = dict(zip("w h depth colour comp filt interlace".split(),
                          struct.unpack(">IIBBBBB", good[ihdr_at + 8: ihdr_at + 21])))
        fields.update(change)
        return good[:ihdr_at] + _chunk(b"IHDR", struct.pack(">IIBBBBB", *fields.values())) + good[ihdr_at + 25:]

    bad_crc = bytearray(good)
    bad_crc[good.index(b"IDAT") + 10] ^= 0xFF
    cases = {
        "not a png": b"not a png",
        "truncated": good[: len(good) // 2],
        "bad crc": bytes(bad_crc),
        "interlaced": with_ihdr(interlace=1),
        "too few rows": with_ihdr(h=11),
        "too many rows": with_ihdr(h=13),
        "unknown chunk": good[:-12] + _chunk(b"abCd", b"x") + good[-12:],
        "filter type 5": _bad_filter(img),
    }
    for name, data in cases.items():
        assert decode_panoptic_png_ids(data) is None, name
    # Through read_panoptic_png the unreadable ones raise as before.
    path = tmp_path / "t.png"
    path.write_bytes(cases["truncated"])
    with pytest.raises(PanopticEvaluationError, match=r"cannot read panoptic PNG .*t\.png"):
        read_panoptic_png(path)


def _bad_filter(img):
    h, w, _ = img.shape
    scan = b"".join(b"\x05" + img[r].tobytes() for r in range(h))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(scan)) + _chunk(b"IEND", b""))


def test_missing_file_message(tmp_path):
    with pytest.raises(PanopticEvaluationError, match=r"cannot read panoptic PNG .*nope\.png \(image 7\)"):
        read_panoptic_png(tmp_path / "nope.png", image_id=7)


def test_sample_data_has_rgb_pngs():
    # Guard: the parity test above must see real panoptic PNGs that the fast path decodes
    # (COCO examples, DeepLab PQ test data, Cityscapes).
    handled = [rel for rel in SAMPLE_PNGS if decode_panoptic_png_ids((TEST_DATA / rel).read_bytes()) is not None]
    assert len(handled) >= 10, handled
