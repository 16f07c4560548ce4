"""``kmax info``: versions, accelerators, the model families and their config presets."""

from __future__ import annotations

import argparse
import platform


def collect_info() -> dict:
    """Return package/torch versions, accelerator availability and device names, presets."""
    import torch

    from kmax_deeplab import __version__
    from kmax_deeplab.config.presets import get_preset, list_presets
    from kmax_deeplab.modeling.families import FAMILIES

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    devices = ["cpu: " + (platform.processor() or platform.machine())]
    if cuda:
        devices += [f"cuda:{i}: {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    if mps:
        devices.append("mps: Apple Metal")
    return {
        "kmax_deeplab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "mps_available": mps,
        "devices": devices,
        "presets": list_presets(),
        "families": {name: {"description": f.description,
                            "importers": sorted(f.importers),
                            "presets": [p for p in list_presets()
                                        if get_preset(p).model.meta_architecture == name]}
                     for name, f in sorted(FAMILIES.items())},
    }


def run(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        import json

        print(json.dumps(info, indent=2))
        return 0
    print(f"kmax-deeplab {info['kmax_deeplab']}  (python {info['python']}, torch {info['torch']})")
    print(f"CUDA available: {info['cuda_available']}" + (f" (CUDA {info['cuda_version']})" if info["cuda_available"] else ""))
    print(f"MPS available:  {info['mps_available']}")
    print("devices:")
    for d in info["devices"]:
        print(f"  {d}")
    print("model families (model.meta_architecture) and their config presets "
          "(kmax train --config NAME, kmax predict --config NAME):")
    for family, entry in info["families"].items():
        print(f"  {family}: {entry['description']}; kmax convert --from "
              f"{'|'.join(entry['importers']) or '-'}")
        for name in entry["presets"]:
            print(f"    {name}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="print versions, devices and config presets",
                              description="Print the package and torch versions, CUDA/MPS availability, "
                                          "device names and the available config presets.")
    p.add_argument("--json", action="store_true", help="print the information as JSON")
    p.set_defaults(func=run)
