"""Export the network to ONNX and to a ``torch.export`` program; run the exports for prediction.

Only the network (backbone + heads, at the model's fixed canvas ``cfg.model.image_size``)
is exported, with a dynamic batch dimension; pre-processing (resize + pad) and the
mask-wise merging stay in Python and are the :class:`~kmax_deeplab.engine.predictor.Predictor`'s
own: :func:`load_exported` wraps an exported file in a module with the model's output contract
and hands it to a ``Predictor``. The run config travels inside the file (ONNX
``metadata_props["kmax_config"]``, the ``.pt2`` extra file ``kmax_config.yaml``), so an export
is self-contained.

ONNX goes through ``torch.onnx.export(..., dynamo=True)`` (the TorchScript exporter cannot
trace the size arithmetic of the pixel decoder's resizes); the graph needs opset >= 17
(LayerNormalization) and is written at opset 18.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml
from torch import Tensor, nn

__all__ = ["ExportedNetwork", "ExportWrapper", "export_onnx", "export_program",
           "export_model", "load_exported", "read_export_config"]

CONFIG_KEY = "kmax_config"
PT2_CONFIG_FILE = "kmax_config.yaml"
ONNX_OPSET = 18
FORMATS = ("onnx", "torch-export")


def export_outputs(cfg: Any) -> tuple[str, ...]:
    """The exported output names: the family's ``inference_keys`` (what its post-processing
    reads; ``pred_logits``, ``pred_masks`` for kMaX), in that order.

    Raises:
        ValueError: unknown model family.
    """
    from kmax_deeplab.modeling.families import family_of

    return tuple(family_of(cfg).inference_keys)


class ExportWrapper(nn.Module):
    """``images [B, 3, Hc, Wc] -> tuple`` of the named outputs (exporters want tensors, not dicts).

    Args:
        model: a model returning a ``MaskTransformerOutput``.
        names: the output keys, e.g. ``("pred_logits", "pred_masks")``.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]):
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.model(images)
        return tuple(out[k] for k in self.names)


def _config_yaml(cfg: Any) -> str:
    from kmax_deeplab.config import config_to_dict

    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def _example(cfg: Any, batch: int = 2) -> Tensor:
    hc, wc = (int(s) for s in cfg.model.image_size)
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, 3, hc, wc, generator=g) * 255


def _program(model: nn.Module, cfg: Any, max_batch: int) -> torch.export.ExportedProgram:
    wrapper = ExportWrapper(model.float().to(memory_format=torch.contiguous_format).eval(),
                            export_outputs(cfg)).eval()
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with torch.no_grad():
        return torch.export.export(wrapper, (_example(cfg),), dynamic_shapes={"images": {0: batch}})


def export_program(model: nn.Module, cfg: Any, path: str | Path, *, max_batch: int = 64,
                   program: torch.export.ExportedProgram | None = None) -> Path:
    """Write ``model`` as a ``torch.export`` program (``.pt2``) with a dynamic batch.

    Args:
        model: the network, built from ``cfg``.
        cfg: the run config (stored in the file).
        path: output file.
        max_batch: largest batch the program accepts.
        program: an already exported program of ``model`` (reused, not re-traced).

    Returns:
        ``path``. Input ``images [B, 3, Hc, Wc]`` float32 0..255; outputs in the order of
        :func:`export_outputs`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if program is None:
        program = _program(model, cfg, max_batch)
    torch.export.save(program, str(path), extra_files={PT2_CONFIG_FILE: _config_yaml(cfg)})
    return path


def export_onnx(model: nn.Module, cfg: Any, path: str | Path, *, max_batch: int = 64,
                opset: int = ONNX_OPSET, optimize: bool = True,
                program: torch.export.ExportedProgram | None = None) -> Path:
    """Write ``model`` as an ONNX graph (dynamo exporter, ``opset``, dynamic batch ``batch``).

    Args:
        model / cfg / max_batch / program: as in :func:`export_program`.
        path: output ``.onnx`` file (weights inside; the exporter's external-data file is
            folded back in).
        opset: ONNX opset, at least 17.
        optimize: run the exporter's graph optimisation (constant folding, fusions); off is
            faster to export and gives the same outputs.

    Returns:
        ``path``. Input ``images``, outputs named as in :func:`export_outputs`.

    Raises:
        ValueError: ``opset`` below 17.
    """
    import onnx

    if opset < 17:
        raise ValueError(f"export: opset {opset} < 17 (LayerNormalization needs 17)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if program is None:
        program = _program(model, cfg, max_batch)
    names = export_outputs(cfg)
    onnx_program = torch.onnx.export(program, (_example(cfg),), dynamo=True, opset_version=opset,
                                     input_names=["images"], output_names=list(names),
                                     optimize=optimize, verbose=False)
    proto = onnx_program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = CONFIG_KEY, _config_yaml(cfg)
    onnx.save_model(proto, str(path))
    return path


def export_model(model: nn.Module, cfg: Any, path: str | Path, fmt: str, **kwargs) -> dict:
    """Export in ``fmt`` (``"onnx"`` or ``"torch-export"``); returns path, seconds and bytes."""
    if fmt not in FORMATS:
        raise ValueError(f"export: format must be one of {FORMATS}, got {fmt!r}")
    start = time.perf_counter()
    fn = export_onnx if fmt == "onnx" else export_program
    out = fn(model, cfg, path, **kwargs)
    return {"path": out, "seconds": time.perf_counter() - start, "bytes": out.stat().st_size}


def read_export_config(path: str | Path):
    """The run config stored in an exported ``.onnx`` or ``.pt2`` file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an export of this library (no stored config).
    """
    from kmax_deeplab.config import config_from_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such exported model")
    if path.suffix == ".onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        text = {p.key: p.value for p in proto.metadata_props}.get(CONFIG_KEY)
    else:
        extra = {PT2_CONFIG_FILE: ""}
        try:
            torch.export.load(str(path), extra_files=extra)
        except Exception as e:  # torch raises several error types for a bad archive
            raise ValueError(f"{path}: not a torch.export program ({e})") from None
        text = extra[PT2_CONFIG_FILE] or None
    if not text:
        raise ValueError(f"{path}: no {CONFIG_KEY} inside; export it with `kmax export`")
    return config_from_dict(yaml.safe_load(text))


class ExportedNetwork(nn.Module):
    """An exported network behind the model interface: ``images -> dict`` of its outputs.

    Args:
        path: a ``.onnx`` file (run by onnxruntime on the CPU) or a ``.pt2`` program.
        names: the output names, in file order.
        threads: onnxruntime intra-op threads (0 = its default).
    """

    def __init__(self, path: str | Path, names: Sequence[str], *, threads: int = 0):
        super().__init__()
        self.path = Path(path)
        self.names = tuple(names)
        if self.path.suffix == ".onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=["CPUExecutionProvider"])
            self.backend = "onnxruntime"
        else:
            # kept out of the module tree: an exported module refuses .train()/.eval()
            self.__dict__["program"] = torch.export.load(str(self.path)).module()
            self.backend = "torch-export"

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """``images [B, 3, Hc, Wc]`` float32 0..255 -> ``{name: tensor}`` (on the input's device)."""
        if self.backend == "onnxruntime":
            x = np.ascontiguousarray(images.detach().float().cpu().numpy())
            outs = [torch.from_numpy(o).to(images.device)
                    for o in self.session.run(list(self.names), {"images": x})]
        else:
            outs = self.program(images.float().contiguous())
        return dict(zip(self.names, outs))


def load_exported(path: str | Path, *, threads: int = 0, **kwargs):
    """A :class:`~kmax_deeplab.engine.predictor.Predictor` running an exported file.

    Same pre-processing and post-processing as the PyTorch predictor; only the forward pass
    runs in onnxruntime (``.onnx``) or the ``torch.export`` program (``.pt2``).

    Args:
        path: the exported file (its stored config gives the canvas, thresholds, dataset).
        threads: onnxruntime intra-op threads.
        **kwargs: :class:`Predictor` options (``batch_size``, ``output_format`` ...);
            fp32 only, and the ONNX backend runs on the CPU.
    """
    from kmax_deeplab.engine.predictor import Predictor

    cfg = read_export_config(path)
    network = ExportedNetwork(path, export_outputs(cfg), threads=threads)
    kwargs.setdefault("channels_last", False)
    return Predictor(network, cfg, **kwargs)
