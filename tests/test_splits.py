"""Seeded splits and validation hold-outs: sizes, determinism, files, recipes, the CLI."""

from pathlib import Path

import numpy as np
import pytest
from conftest import real_data

from mlrkit.cli import main
from mlrkit.data import DataFormatError, MultiLabelData, create_dataset
from mlrkit.data.splits import apply_recipe_splits, holdout_split, random_split, write_split_file


def toy(n: int = 100, splits: bool = True) -> MultiLabelData:
    rng = np.random.default_rng(0)
    return MultiLabelData(
        name="toy", root=Path("toy"), class_names=["a", "b"],
        image_paths=[Path("toy") / f"{i}.jpg" for i in range(n)],
        labels=rng.integers(0, 2, size=(n, 2)).astype(np.int8),
        splits=np.array(["train"] * 80 + ["test"] * (n - 80)) if splits else None,
    )


def test_holdout_moves_a_seeded_share_of_train_and_nothing_else():
    data = toy()
    out = holdout_split(data, 20, seed=3)
    assert (out.splits == "holdout").sum() == 20 and (out.splits == "train").sum() == 60
    assert (out.splits[80:] == "test").all()                    # other splits untouched
    chosen = np.flatnonzero(out.splits == "holdout")
    assert set(chosen) <= set(range(80))
    expected = np.sort(np.random.default_rng(3).permutation(80)[:20])
    assert np.array_equal(chosen, expected)                      # the documented draw
    assert np.array_equal(holdout_split(data, 0.25, seed=3).splits, out.splits)  # 0.25 x 80 = 20
    assert not np.array_equal(holdout_split(data, 20, seed=4).splits, out.splits)
    np.testing.assert_array_equal(out.labels, data.labels)


def test_holdout_refuses_bad_sizes_and_existing_names():
    data = toy()
    for size in (0, 80, 1.5, -3, True):
        with pytest.raises(ValueError, match="size"):
            holdout_split(data, size)
    with pytest.raises(DataFormatError, match="exists already"):
        holdout_split(data, 10, name="test")
    with pytest.raises(DataFormatError, match="has no split"):
        holdout_split(toy(splits=False), 10)


def test_random_split_counts_cover_every_image_once():
    data = random_split(toy(101, splits=False), {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    counts = {s: int((data.splits == s).sum()) for s in ("train", "val", "test")}
    assert counts == {"train": 81, "val": 10, "test": 10}       # 80.8 / 10.1 / 10.1, remainder first
    again = random_split(toy(101, splits=False), {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    assert np.array_equal(again.splits, data.splits)
    with pytest.raises(ValueError, match="sum to"):
        random_split(data, {"train": 0.8, "test": 0.1})


def test_recipe_split_refuses_data_that_has_one_and_holdout_checks_keys():
    with pytest.raises(DataFormatError, match="has its own split"):
        apply_recipe_splits(toy(), {"split": {"train": 0.5, "test": 0.5}})
    with pytest.raises(ValueError, match="data.holdout takes"):
        apply_recipe_splits(toy(), {"holdout": {"sise": 10}})
    out = apply_recipe_splits(toy(splits=False), {"split": {"train": 0.9, "test": 0.1, "seed": 1},
                                                  "holdout": {"size": 9, "seed": 2}})
    assert [int((out.splits == s).sum()) for s in ("train", "holdout", "test")] == [81, 9, 10]


def make_csv(root: Path, n: int = 30) -> None:
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        (root / "images" / f"{i}.jpg").write_bytes(b"")
        rows.append(f"images/{i}.jpg,{i % 2},{(i + 1) % 2}")
    (root / "labels.csv").write_text("image,a,b\n" + "\n".join(rows) + "\n")


def test_csv_image_paths_relative_to_the_csv_and_split_file_round_trip(tmp_path):
    make_csv(tmp_path / "d")
    data = create_dataset("csv", tmp_path / "d")                 # "images/x.jpg" next to the CSV
    assert data.image_paths[0] == tmp_path / "d" / "images" / "0.jpg"
    with pytest.raises(DataFormatError, match="mlrkit data split"):
        data.split_index("train")
    split = random_split(data, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=5)
    write_split_file(split, tmp_path / "d" / "split.csv")
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_split_file(split, tmp_path / "d" / "split.csv")
    reread = create_dataset("csv", tmp_path / "d")
    assert np.array_equal(reread.splits, split.splits)


def test_cli_data_split_writes_split_csv(tmp_path, capsys):
    make_csv(tmp_path / "d")
    args = ["data", "split", "--dataset", "csv", "--root", str(tmp_path / "d"), "--seed", "1"]
    assert main(args) == 0
    assert "train 24, val 3, test 3" in capsys.readouterr().out
    assert main(args) == 2                                      # exists: refused, one line
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--train", "0.5", "--val", "0.5", "--test", "0"]) == 0
    data = create_dataset("csv", tmp_path / "d")
    assert {s: int((data.splits == s).sum()) for s in data.split_names()} == {"train": 15, "val": 15}


def test_voc2007_holdout_as_the_recipes_use_it():
    root = real_data("voc2007")
    data = apply_recipe_splits(create_dataset("voc2007", root),
                               {"holdout": {"size": 250, "seed": 0, "from": "train"}})
    counts = {s: int((data.splits == s).sum()) for s in data.split_names()}
    assert counts == {"train": 2250, "holdout": 250, "val": 2508}


def write_splits(root: Path, names: list[str]) -> None:
    (root / "split.csv").write_text(
        "image,split\n" + "".join(f"images/{i}.jpg,{s}\n" for i, s in enumerate(names)))


def test_split_name_differing_from_a_standard_one_by_case_is_called_out(tmp_path):
    make_csv(tmp_path / "d", n=4)
    write_splits(tmp_path / "d", ["train", "Val", "test", "train"])
    with pytest.raises(DataFormatError,
                       match=r"split\.csv:3: split 'Val' differs from the split name 'val' only "
                             r"by case"):
        create_dataset("csv", tmp_path / "d")


def test_unknown_split_name_is_an_error_unless_accepted_by_option(tmp_path):
    make_csv(tmp_path / "d", n=4)
    write_splits(tmp_path / "d", ["train", "dev", "test", "holdout"])
    with pytest.raises(DataFormatError, match=r"split\.csv:3: split 'dev' is not a known split "
                                              r"name \(train, val, test, trainval, holdout\).*"
                                              r"extra_splits"):
        create_dataset("csv", tmp_path / "d")
    data = create_dataset("csv", tmp_path / "d", extra_splits=["dev"])
    assert data.split_names() == ["train", "dev", "test", "holdout"]
    assert create_dataset("csv", tmp_path / "d", extra_splits="dev").split_names()[1] == "dev"


def test_a_negative_share_is_named_not_dropped(tmp_path, capsys):
    from test_recipe_run import make_dataset

    make_dataset(tmp_path, n=8)
    (tmp_path / "split.csv").unlink()
    assert main(["data", "split", "--dataset", "csv", "--root", str(tmp_path), "--train", "-0.5",
                 "--val", "0.3", "--test", "0.1"]) == 2
    assert capsys.readouterr().err.strip() == ("mlrkit: error: --train -0.5: a share is 0 (no "
                                               "such split) to 1; give shares that sum to 1")
