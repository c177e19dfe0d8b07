"""Dense ConSE against ConSE on VOC 2007, training-free: mAP over the 20 class names.

ConSE scores each photo once, from the pooled feature map of the ImageNet EfficientNet-Lite0;
dense ConSE (:func:`mlrkit.zero_shot.dense_conse_scores`) also applies the classifier at each of
the 7 x 7 positions of that map and averages each label's ``top_k`` best positions with the global
score at ``local_weight``. The grid runs on the official ``train`` photos (where the defaults
``DENSE_TOP_K``, ``DENSE_LOCAL_WEIGHT`` were chosen) and on the test photos (the official ``val``,
as in every VOC 2007 table here), from the feature cache of the VOC recipes.

    python benchmarks/dense_conse.py

Writes ``benchmarks/results/dense_conse_voc2007.md`` and ``.json``; the last lines are
``dense_conse_test_map=`` and ``conse_test_map=`` (percent, the defaults).
"""

from __future__ import annotations

import numpy as np
import torch
from recipe_grid import ROOT, markdown_table, write_result

from mlrkit.data import create_dataset
from mlrkit.data.feature_cache import load_features
from mlrkit.encoders.imagenet import pooled_probabilities
from mlrkit.engine.recipe import load_recipe
from mlrkit.metrics import mean_average_precision
from mlrkit.zero_shot import DENSE_LOCAL_WEIGHT, DENSE_TOP_K, conse_scores, dense_conse_scores

GRID = [(k, w) for k in (1, 4, 16, 49) for w in (0.5, 1.0)]


def split_scores(data, cache, split: str) -> dict[str, float]:
    """mAP (percent) of ConSE and of every grid point on one split's photos."""
    rows = data.split_index(split)
    names, labels = list(data.class_names), data.labels[rows]

    def mean_ap(scores: np.ndarray) -> float:
        return 100 * mean_average_precision(torch.from_numpy(scores), labels).value

    out = {"conse": mean_ap(conse_scores(pooled_probabilities(cache.pooled[rows]), names))}
    maps = np.asarray(cache.spatial[rows], dtype=np.float32)
    for k, w in GRID:
        out[f"k={k} w={w}"] = mean_ap(dense_conse_scores(maps, names, top_k=k, local_weight=w))
    return out


def main() -> None:
    recipe = load_recipe(ROOT / "configs" / "linear_voc2007_partial.yaml")
    data = create_dataset("voc2007", ROOT / recipe["data"]["root"])
    cache = load_features(ROOT / recipe["features"]["cache"])
    if cache.image_ids != data.image_ids():
        raise SystemExit(f"{recipe['features']['cache']} holds other photos than VOC 2007; "
                         f"extract it first (python benchmarks/partial_labels.py does)")
    results = {split: split_scores(data, cache, split) for split in ("train", "val")}
    default = f"k={DENSE_TOP_K} w={DENSE_LOCAL_WEIGHT}"
    rows = [[name + (" (default)" if name == default else ""), f"{results['train'][name]:.1f}",
             f"{results['val'][name]:.1f}"] for name in results["train"]]
    body = [
        ("Training-free mAP (percent) over VOC 2007's 20 class names (MiniLM, \"a photo of a "
         "{}\", T = 10), from the cached ImageNet EfficientNet-Lite0 features at 224 px. k: "
         "positions averaged per label; w: the local score's share (0.5: averaged with the "
         "global ConSE score). Train: the official train photos (where the default was chosen); "
         "test: the official val photos."),
        "",
        *markdown_table(["scorer", "train mAP", "test mAP"], rows),
        "",
        f"dense_conse_test_map={results['val'][default]:.2f}",
        f"conse_test_map={results['val']['conse']:.2f}",
    ]
    print(write_result(ROOT / "benchmarks" / "results", "dense_conse_voc2007",
                       "Dense ConSE against ConSE, VOC 2007", body, results))


if __name__ == "__main__":
    main()
