"""`mlrkit data summary` flags classes that appear in very few images as possible typos."""

from pathlib import Path

import numpy as np
import pytest

from mlrkit.cli import main
from mlrkit.data import MultiLabelData
from mlrkit.data.summary import rare_classes, summarize


def _labels_with_a_typo(root: Path) -> None:
    """31 images labelled cat/dog, one of them also 'dgo'; no classes.txt."""
    (root / "images").mkdir(parents=True)
    rows = [f"{i}.jpg,{'dog' if i % 2 else 'cat'}" for i in range(30)] + ["30.jpg,dgo;cat"]
    for i in range(31):
        (root / "images" / f"{i}.jpg").write_bytes(b"")
    (root / "labels.csv").write_text("image,labels\n" + "\n".join(rows) + "\n")


def test_a_misspelt_class_in_an_image_labels_file_is_flagged(tmp_path: Path, capsys):
    _labels_with_a_typo(tmp_path)

    assert main(["data", "summary", "--dataset", "csv", "--root", str(tmp_path)]) == 0

    out = capsys.readouterr().out
    assert "possible typos: 1 class(es) in very few images: 'dgo' (1)" in out
    assert "'cat'" not in out.split("possible typos")[1]


def test_rare_means_at_most_two_images_or_under_a_thousandth_of_them():
    assert rare_classes({"a": 0, "b": 2, "c": 3}, images=100) == {"a": 0, "b": 2}
    assert rare_classes({"a": 9, "b": 10}, images=10_000) == {"a": 9}
    labels = np.array([[1, 0], [1, 0], [1, 1]], dtype=np.int8)
    data = MultiLabelData("toy", Path("toy"), ["x", "y"], [Path(f"{i}.jpg") for i in range(3)],
                          labels)
    assert summarize(data).rare_classes == {"y": 1}


def test_train_refuses_the_flagged_class_unless_the_recipe_allows_new_classes(tmp_path, capsys):
    from mlrkit.data import create_dataset
    from mlrkit.data.summary import refuse_misspelt_classes

    _labels_with_a_typo(tmp_path / "data")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: typo\ndata: {{dataset: csv, root: {tmp_path / 'data'}}}\n"
                      "features: {encoder: resnet18, weights: null}\n")
    assert main(["train", "--config", str(recipe), "--run-dir", str(tmp_path / "run")]) == 2
    said = capsys.readouterr().err.strip()
    assert "class(es) 'dgo' (1 image) appear in very few images" in said
    assert said.endswith("or set data.allow_new_classes: true to train on them")
    assert "\n" not in said and not (tmp_path / "run").exists()

    data = create_dataset("csv", tmp_path / "data")
    assert data.classes_from_labels
    (tmp_path / "data" / "classes.txt").write_text("cat\ndog\ndgo\n")  # a list: names on purpose
    listed = create_dataset("csv", tmp_path / "data")
    assert not listed.classes_from_labels
    refuse_misspelt_classes(listed)  # no error
    from mlrkit.engine.recipe_schema import DataSection
    section = {"dataset": "csv", "root": "d"}
    assert not DataSection.model_validate(section).allow_new_classes  # refused by default
    assert DataSection.model_validate({**section, "allow_new_classes": True}).allow_new_classes


def test_classes_written_two_ways_are_flagged_and_refused_by_train(tmp_path, capsys):
    from mlrkit.data.files import DataFormatError
    from mlrkit.data.summary import near_duplicate_classes, refuse_misspelt_classes

    assert near_duplicate_classes(["cat", "Cat", "dog", "hot  dog", "Hot dog", "bird"]) == \
        [["cat", "Cat"], ["hot  dog", "Hot dog"]]
    (tmp_path / "images").mkdir()
    for i in range(4):
        (tmp_path / "images" / f"{i}.jpg").write_bytes(b"")
    (tmp_path / "labels.csv").write_text("image,cat,Cat\n0.jpg,1,0\n1.jpg,0,1\n2.jpg,1,0\n"
                                         "3.jpg,0,1\n")
    assert main(["data", "summary", "--dataset", "csv", "--root", str(tmp_path)]) == 0
    assert ("possible typos: classes 'cat' and 'Cat' differ only in letter case or spacing"
            in capsys.readouterr().out)
    data = MultiLabelData("toy", tmp_path, ["cat", "Cat"], [Path("0.jpg")],
                          np.array([[1, 0]], dtype=np.int8))
    with pytest.raises(DataFormatError, match=r"classes 'cat' and 'Cat' differ only in letter "
                                              r"case .*data.allow_new_classes: true"):
        refuse_misspelt_classes(data)
