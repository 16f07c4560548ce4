"""Checksums of weights (issue 14, item 4): CRC32C against the RFC 3720 vectors and
google-crc32c, the SHA-256 sidecar of native folders, NaN/inf weights refused by name."""

from __future__ import annotations

import os

import pytest
import torch

from kmax_deeplab import cli
from kmax_deeplab.checkpoints import checksums
from kmax_deeplab.checkpoints.checksums import (
    ChecksumError,
    NonFiniteWeightsError,
    crc32c,
    crc32c_python,
    mask_crc32c,
    unmask_crc32c,
)
from kmax_deeplab.checkpoints.native import WEIGHTS_NAME, load_native, save_native
from kmax_deeplab.config import load_config

# RFC 3720 (iSCSI) appendix B.4 test vectors, plus the classic check value.
VECTORS = [
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"123456789", 0xE3069283),
    (b"", 0x0),
]


@pytest.mark.parametrize("data,expected", VECTORS)
def test_crc32c_known_vectors(data, expected):
    assert crc32c_python(data) == expected
    assert crc32c(data) == expected


def test_crc32c_fallback_matches_google_crc32c_on_long_inputs():
    google_crc32c = pytest.importorskip("google_crc32c")
    rng = __import__("random").Random(0)
    for n in (65535, 65536, 70001, 300_007):  # around and above the vectorised path
        data = rng.randbytes(n)
        assert crc32c_python(data) == google_crc32c.value(data), n
        cut = n // 3  # continuation from a previous value
        assert crc32c_python(data[cut:], crc32c_python(data[:cut])) == google_crc32c.value(data)
    assert unmask_crc32c(mask_crc32c(0xE3069283)) == 0xE3069283


def _tiny_cfg():
    return load_config("synthetic/kmax_tiny", ["model.image_size=[33,33]", "data.crop_size=[33,33]"])


@pytest.fixture(scope="module")
def tiny_state():
    from kmax_deeplab.modeling.kmax import build_kmax

    torch.manual_seed(0)
    return build_kmax(_tiny_cfg().model).state_dict()


def test_native_folder_sha256_checked_on_load(tmp_path, tiny_state, capsys):
    folder = save_native(tmp_path / "m", tiny_state, _tiny_cfg())
    side = folder / (WEIGHTS_NAME + ".sha256")
    assert side.read_text().split()[1] == WEIGHTS_NAME
    load_native(folder)  # intact: loads
    weights = folder / WEIGHTS_NAME
    blob = bytearray(weights.read_bytes())
    blob[-5] ^= 0x01  # one bit of the last tensor
    weights.write_bytes(bytes(blob))
    with pytest.raises(ChecksumError, match="SHA-256 mismatch"):
        load_native(folder)
    img = tmp_path / "a.png"
    __import__("PIL.Image").Image.new("RGB", (8, 8)).save(img)
    code = cli.main(["predict", str(img), "-o", str(tmp_path / "o"), "--weights", str(folder),
                     "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "SHA-256 mismatch" in err and str(weights) in err
    assert "Traceback" not in err


def test_converted_folder_follows_the_umask(tmp_path, tiny_state):
    from safetensors.torch import save_file

    from kmax_deeplab.checkpoints.zoo import convert_file

    src = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_state.items()}, str(src))
    old = os.umask(0o022)
    try:
        out = convert_file(src, tmp_path / "native", source="imagenet", preset="synthetic/kmax_tiny",
                           strict=False)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    assert (out / WEIGHTS_NAME).stat().st_mode & 0o777 == 0o644


def test_folder_without_sidecar_loads_with_a_warning(tmp_path, tiny_state):
    folder = save_native(tmp_path / "m", tiny_state, _tiny_cfg())
    (folder / (WEIGHTS_NAME + ".sha256")).unlink()
    with pytest.warns(UserWarning, match="not verified"):
        load_native(folder)


def test_nan_weights_are_refused_naming_the_tensor(tmp_path, tiny_state, capsys):
    state = dict(tiny_state)
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 3)
    bad = state[name].clone()
    bad.view(-1)[2] = float("nan")
    bad.view(-1)[3] = float("inf")
    state[name] = bad
    folder = save_native(tmp_path / "m", state, _tiny_cfg())
    with pytest.raises(NonFiniteWeightsError, match=rf"tensor '{name}' has 2 NaN/inf"):
        load_native(folder)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    img = tmp_path / "a.png"
    __import__("PIL.Image").Image.new("RGB", (8, 8)).save(img)
    code = cli.main(["predict", str(img), "-o", str(tmp_path / "o"), "--config",
                     "synthetic/kmax_tiny", "--weights", str(tmp_path / "w.safetensors"), "--quiet",
                     "--opts", "model.image_size=[33,33]", "data.crop_size=[33,33]"])
    err = capsys.readouterr().err
    assert code == 1 and name in err and "NaN/inf" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_nan_check_covers_numpy_arrays():
    np = pytest.importorskip("numpy")
    checksums.check_finite({"a": np.zeros(3), "i": np.arange(3)}, "x")
    with pytest.raises(NonFiniteWeightsError, match="'b'"):
        checksums.check_finite({"a": np.zeros(3), "b": np.array([1.0, np.inf])}, "x")
