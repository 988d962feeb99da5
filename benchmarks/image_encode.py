"""Image encode throughput (images per second) of the image encoders on this machine.

    nice -n 10 python -m benchmarks.image_encode --threads 1

Seeded random 256x256 JPEGs (quality 90, as in ``benchmarks.movielens``), batches of ``--batch``,
fit timed apart. ``torchvision:NAME`` and ``timm:NAME`` specs without ``@WEIGHTS`` get a randomly initialised state
dict of that model written to a temporary file (the hub is not needed, and the weights' values do
not change the speed). Prints one JSON row per encoder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def random_weights(library: str, name: str, folder: Path) -> Path:
    """A randomly initialised state dict of ``library`` ("torchvision" or "timm") model ``name``."""
    from training.encode.encoders import import_torchvision

    import_torchvision()
    import torch

    torch.manual_seed(0)
    if library == "timm":
        import timm

        model = timm.create_model(name, pretrained=False)
    else:
        from torchvision.models import get_model

        model = get_model(name, weights=None)
    path = folder / f"{library}_{name}_random.pth"
    torch.save(model.state_dict(), path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoders", nargs="+", default=["histogram", "torchvision:resnet18", "timm:resnet18"])
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)
    from PIL import Image

    from training.encode import make_encoder

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(0)
        paths = []
        for k in range(args.images):
            path = folder / f"{k}.jpg"
            Image.fromarray(rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)).save(path, quality=90)
            paths.append(path)
        for spec in args.encoders:
            library, _, name = spec.partition(":")
            if library in ("torchvision", "timm") and "@" not in spec:
                import torch

                torch.set_num_threads(args.threads)
                spec = f"{spec}@{random_weights(library, name, folder)}"
            enc: Any = make_encoder("image", spec)
            t0 = time.perf_counter()
            enc.fit(paths)
            fit = time.perf_counter() - t0
            t0 = time.perf_counter()
            dim = 0
            for b in range(0, len(paths), args.batch):
                dim = enc.encode(paths[b : b + args.batch]).shape[1]
            sec = time.perf_counter() - t0
            shown = spec.split("@")[0] + (" (random weights)" if "@" in spec else "")
            row = {
                "encoder": shown,
                "dim": int(dim),
                "images": len(paths),
                "threads": args.threads,
                "fit_s": round(fit, 2),
                "encode_s": round(sec, 2),
                "images_per_s": round(len(paths) / sec, 1),
            }
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
