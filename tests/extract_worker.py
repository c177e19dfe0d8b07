"""Extract the features of test_feature_cache's tiny images; run alone or under torchrun.

Arguments: the data folder (images/*.jpg, labels.npy, splits.npy), the cache folder, the batch size
and the number of committed rows after which to stop (0: run to the end). Next to the cache folder
it writes ``computed.txt``, the rows this call computed (rank 0), and ``encoded-<rank>.txt``, the
images each rank passed through the encoder (shape probe included).
"""

import sys
from pathlib import Path

import numpy as np
import torch

from mlrkit.data.dataset import MultiLabelData
from mlrkit.data.feature_cache import extract_features, load_features
from mlrkit.distributed import init_distributed
from mlrkit.encoders.image import create_image_encoder

IMAGE_SIZE = 64


class Stop(RuntimeError):
    pass


def main(root: Path, out: Path, batch_size: int, stop_after: int) -> None:
    torch.set_num_threads(1)
    info = init_distributed(torch.device("cpu"))
    data = MultiLabelData(
        "tiny", root, ["cat", "dog", "person"], sorted((root / "images").glob("*.jpg")),
        np.load(root / "labels.npy"), np.load(root / "splits.npy"),
    )
    encoder = create_image_encoder("resnet10t", image_size=IMAGE_SIZE, seed=0)

    def stop(committed: int, total: int) -> None:
        if stop_after and committed >= stop_after:
            raise Stop(f"stopped after {committed} rows")

    encoded = []
    encoder.register_forward_hook(lambda module, args, result: encoded.append(len(args[0])))
    try:
        summary = extract_features(data, encoder, out, batch_size=batch_size, num_workers=0,
                                   spatial=True, progress=False, on_batch=stop)
    finally:
        (out.parent / f"encoded-{info.rank}.txt").write_text(str(sum(encoded)))
    load_features(out, data=data)  # complete on every rank as soon as extract_features returns
    if info.is_main:
        (out.parent / "computed.txt").write_text(str(summary.computed))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
