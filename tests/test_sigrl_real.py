"""A SigRL run trained on real photos ranks label names it never saw on held-out photos.

200 coco2014-6k training photos (EfficientNet-Lite0 features, MiniLM label embeddings) with five
unseen classes of COCO's 65/15 split (airplane, bear, cat, toilet, train) hidden from training; then
``mlrkit tag --checkpoint`` scores those five names on 40 test photos that contain exactly one of
them. Chance: mean rank of the true class 2.0 (uniform over ranks 0..4), top-1 0.20.
"""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import real_data

from mlrkit.cli import main
from mlrkit.engine.recipe import load_recipe
from mlrkit.engine.run import train_run

UNSEEN = ["airplane", "bear", "cat", "toilet", "train"]


def small_copy(source: Path, root: Path) -> list[tuple[str, str]]:
    """Copy 200 train, 40 val (the next training photos) and 40 test photos (each with exactly
    one unseen class) of coco2014-6k into ``root`` as a CSV dataset of label lists; returns the
    test photos' (file, class)."""
    rows = list(csv.reader((source / "labels.csv").open()))[1:]
    split = dict(csv.reader((source / "split.csv").open()))

    def unseen(row: list[str]) -> list[str]:
        return [name for name in row[1].split(";") if name in UNSEEN]

    train = [r for r in rows if split[r[0]] == "train"]
    test = [r for r in rows if split[r[0]] == "test" and len(unseen(r)) == 1][:40]
    parts = {"train": train[:200], "val": train[200:240], "test": test}
    (root / "images").mkdir(parents=True)
    for row in [r for part in parts.values() for r in part]:
        shutil.copy(source / "images" / row[0], root / "images" / row[0])
    shutil.copy(source / "classes.txt", root / "classes.txt")
    with (root / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["image", "labels"]] + [r for p in parts.values() for r in p])
    with (root / "split.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["image", "split"]] + [[r[0], name] for name, part in
                                                        parts.items() for r in part])
    return [(r[0], unseen(r)[0]) for r in test]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sigrl-real")
    held_out = small_copy(real_data("coco2014-6k"), tmp / "data")
    recipe = {
        "name": "sigrl-real-photos",
        "data": {"dataset": "csv", "root": str(tmp / "data")},
        "features": {"encoder": "tf_efficientnet_lite0", "weights": "imagenet",
                     "image_size": 224, "spatial": True, "cache": str(tmp / "cache"),
                     "num_workers": 0},
        "protocol": {"name": "zero_shot", "unseen": UNSEEN},
        "label_embeddings": {"source": "minilm", "templates": ["a photo of a {}"]},
        "method": {"name": "sigrl", "distill_weight": 1000.0, "class_chunk": 80,
                   "distill_templates": ["a photo of a {}"]},
        "train": {"epochs": 3, "batch_size": 16, "lr": 0.001, "optimizer": "adamw",
                  "schedule": "cosine", "warmup_epochs": 1, "no_decay_1d": True,
                  "weight_decay": 1e-4, "progress": False, "device": "cpu"},
    }
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    train_run(load_recipe(tmp / "recipe.yaml"), tmp / "run")
    return tmp, held_out


def test_tag_with_a_sigrl_checkpoint_ranks_unseen_classes_on_held_out_photos(trained, capsys):
    tmp, held_out = trained
    assert set(json.loads((tmp / "run" / "class_split.json").read_text())["unseen"]) == set(UNSEEN)
    photos = [str(tmp / "data" / "images" / name) for name, _ in held_out]
    capsys.readouterr()
    assert main(["tag", *photos, "--labels", ", ".join(UNSEEN), "--checkpoint",
                 str(tmp / "run"), "--top-k", "5", "--no-progress"]) == 0
    tagged = json.loads(capsys.readouterr().out)
    assert [entry["image"] for entry in tagged] == photos
    ranks = [[label["label"] for label in entry["labels"]].index(truth)
             for entry, (_, truth) in zip(tagged, held_out, strict=True)]
    # chance: mean rank 2.0 with a standard error of 0.22 over 40 photos
    assert np.mean(ranks) < 1.6
    assert np.mean(np.asarray(ranks) == 0) > 0.2
