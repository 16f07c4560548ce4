"""Checksums and sanity checks of weights: CRC32C (TF checkpoints), SHA-256 (native folders), NaN/inf.

* :func:`crc32c` -- CRC-32C (Castagnoli, reflected polynomial ``0x82F63B78``, init and
  final XOR ``0xFFFFFFFF``; RFC 3720 §B.4), the checksum TF's tensor bundles store per
  tensor (masked as LevelDB does, :func:`unmask_crc32c`). It uses ``google-crc32c`` (a core
  dependency, C/SSE4.2: ~GB/s) and falls back to a table-driven pure-Python loop when that
  package is unavailable (a numpy-vectorised table-driven fallback, tested against the
  RFC 3720 vectors and google-crc32c).
* :func:`sha256_file`, :func:`write_sha256` / :func:`verify_sha256` -- the
  ``model.safetensors.sha256`` sidecar of a native checkpoint folder (``sha256sum`` format:
  ``"<64 hex>  model.safetensors"``), written by ``save_native`` and checked on load.
* :func:`check_finite` -- refuse weights holding NaN or inf, naming the tensor.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Mapping

from kmax_deeplab.errors import ChecksumError, InputError

__all__ = ["crc32c", "crc32c_python", "unmask_crc32c", "mask_crc32c", "sha256_file",
           "sha256_sidecar", "write_sha256", "verify_sha256", "check_finite",
           "NonFiniteWeightsError"]

_POLY = 0x82F63B78  # Castagnoli, bit-reflected


def _make_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()


def _crc_loop(data: bytes, reg: int) -> int:
    """Advance the raw CRC register ``reg`` over ``data`` (no init/final XOR), byte by byte."""
    table = _TABLE
    for b in data:
        reg = table[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg


def _crc_lanes(data: bytes, reg: int) -> tuple[int, int]:
    """Advance ``reg`` over the longest prefix of ``data`` that splits into K equal lanes.

    The raw CRC register update is linear over GF(2): after ``A || B``,
    ``reg = Z_|B|(reg after A) ^ (reg over B started from 0)``, where ``Z_L`` advances a
    register over ``L`` zero bytes. All lanes are advanced together with numpy (one
    vectorised table lookup per byte position), 32 extra lanes fed with zeros and started
    at ``1 << i`` give the columns of ``Z_L``, and the lane registers are folded with it.

    Returns:
        ``(register, number of bytes consumed)``.
    """
    import numpy as np

    n = len(data)
    lane_len = max(256, int(n ** 0.5))
    k = n // lane_len
    if k < 2:
        return reg, 0
    table = np.asarray(_TABLE, dtype=np.uint32)
    block = np.frombuffer(data, dtype=np.uint8, count=k * lane_len).reshape(k, lane_len)
    regs = np.zeros(k + 32, dtype=np.uint32)
    regs[0] = reg
    regs[k:] = np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32))
    cols = np.zeros((k + 32, lane_len), dtype=np.uint8)  # the basis lanes read zeros
    cols[:k] = block
    cols_t = np.ascontiguousarray(cols.T)  # [lane_len, K + 32]: one row per byte position
    for j in range(lane_len):
        regs = table[(regs ^ cols_t[j]) & 0xFF] ^ (regs >> 8)
    basis = [int(v) for v in regs[k:]]  # Z_L(1 << i)
    # Z_L as four 256-entry tables, one per byte of the register.
    ztab = []
    for byte in range(4):
        t = [0] * 256
        for v in range(1, 256):
            low = (v & -v).bit_length() - 1
            t[v] = t[v & (v - 1)] ^ basis[8 * byte + low]
        ztab.append(t)
    t0, t1, t2, t3 = ztab
    out = int(regs[0])
    for r in regs[1:k].tolist():
        out = (t0[out & 0xFF] ^ t1[(out >> 8) & 0xFF] ^ t2[(out >> 16) & 0xFF] ^ t3[out >> 24]) ^ r
    return out, k * lane_len


def crc32c_python(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """Pure-Python (numpy-vectorised) CRC-32C of ``data``, continuing from ``crc`` (0 to start).

    Small inputs run the classic table-driven loop; from 64 kB on, the data is cut into
    ~sqrt(n) lanes advanced together and folded by linearity (:func:`_crc_lanes`): a
    100 MB checkpoint takes 3.5-6 s (shared 2-core VM) instead of ~25 s; google-crc32c 0.04 s.

    Returns:
        The CRC as an unsigned 32-bit int (``crc32c_python(b"123456789") == 0xE3069283``).
    """
    data = bytes(data)
    reg = (crc ^ 0xFFFFFFFF) & 0xFFFFFFFF
    done = 0
    if len(data) >= (64 << 10):
        reg, done = _crc_lanes(data, reg)
    reg = _crc_loop(data[done:], reg)
    return reg ^ 0xFFFFFFFF


def _native() -> Callable[[bytes, int], int] | None:
    try:
        import google_crc32c  # type: ignore[import-not-found]
    except ImportError:
        return None
    return lambda data, crc=0: int(google_crc32c.extend(crc, bytes(data)))


_NATIVE = _native()


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C of ``data`` (continuing from ``crc``): google-crc32c, else :func:`crc32c_python`."""
    if _NATIVE is not None:
        return _NATIVE(data, crc)
    return crc32c_python(data, crc)


def unmask_crc32c(masked: int) -> int:
    """Invert LevelDB/TF masking ``((crc >> 15) | (crc << 17)) + 0xA282EAD8`` (mod 2^32)."""
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def mask_crc32c(crc: int) -> int:
    """LevelDB/TF masking of a CRC (what TF writes into a bundle index)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------- SHA-256
def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk``-byte pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_sidecar(weights: str | Path) -> Path:
    """The sidecar of ``weights``: ``<weights>.sha256``."""
    weights = Path(weights)
    return weights.with_name(weights.name + ".sha256")


def write_sha256(weights: str | Path) -> str:
    """Write ``<weights>.sha256`` (``sha256sum`` format, atomically); returns the digest."""
    from kmax_deeplab.fileio import atomic_write_text

    weights = Path(weights)
    digest = sha256_file(weights)
    atomic_write_text(sha256_sidecar(weights), f"{digest}  {weights.name}\n")
    return digest


def verify_sha256(weights: str | Path, *, required: bool = False) -> bool:
    """Check ``weights`` against its ``.sha256`` sidecar.

    Args:
        weights: the weights file (``model.safetensors``).
        required: a missing sidecar is an error (else: returns False, nothing checked).

    Returns:
        True when a sidecar was found and matches.

    Raises:
        ChecksumError: the digest differs, the sidecar is malformed, or it is missing and
            ``required``.
    """
    weights = Path(weights)
    side = sha256_sidecar(weights)
    if not side.is_file():
        if required:
            raise ChecksumError(f"{side}: missing (cannot verify {weights.name})")
        return False
    fields = side.read_text(encoding="utf-8", errors="replace").split()
    expected = fields[0].lower() if fields else ""
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise ChecksumError(f"{side}: not a SHA-256 line ('<64 hex digits>  {weights.name}')")
    got = sha256_file(weights)
    if got != expected:
        raise ChecksumError(f"{weights}: SHA-256 mismatch (file {got[:16]}..., {side.name} "
                            f"{expected[:16]}...): the weights are corrupt or were changed",
                            hint="re-download or re-convert the checkpoint")
    return True


# --------------------------------------------------------------------------- NaN / inf
class NonFiniteWeightsError(InputError):
    """A weight tensor holds NaN or inf."""


def check_finite(state: Mapping[str, object], source: str) -> None:
    """Refuse a state dict with NaN/inf in a floating-point tensor.

    Args:
        state: ``name -> torch.Tensor | np.ndarray``.
        source: file or folder named in the error.

    Raises:
        NonFiniteWeightsError: names ``source``, the first bad tensor and how many values.
    """
    import numpy as np
    import torch

    bad = []
    for name, t in state.items():
        if isinstance(t, torch.Tensor):
            if t.is_floating_point() or t.is_complex():
                finite = torch.isfinite(t)
                if not bool(finite.all()):
                    bad.append((name, int((~finite).sum()), t.numel()))
        elif isinstance(t, np.ndarray) and t.dtype.kind in "fc":
            finite = np.isfinite(t)
            if not finite.all():
                bad.append((name, int((~finite).sum()), t.size))
    if bad:
        name, n, total = bad[0]
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise NonFiniteWeightsError(f"{source}: tensor {name!r} has {n} NaN/inf value(s) of "
                                    f"{total}{more}; refusing weights that cannot predict",
                                    hint="use an earlier checkpoint of the run")
