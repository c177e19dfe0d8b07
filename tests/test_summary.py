"""`mlrkit data summary` flags classes that appear in very few images as possible typos."""

from pathlib import Path

import numpy as np

from mlrkit.cli import main
from mlrkit.data import MultiLabelData
from mlrkit.data.summary import rare_classes, summarize


def test_a_misspelt_class_in_an_image_labels_file_is_flagged(tmp_path: Path, capsys):
    (tmp_path / "images").mkdir()
    rows = [f"{i}.jpg,{'dog' if i % 2 else 'cat'}" for i in range(30)] + ["30.jpg,dgo;cat"]
    for i in range(31):
        (tmp_path / "images" / f"{i}.jpg").write_bytes(b"")
    (tmp_path / "labels.csv").write_text("image,labels\n" + "\n".join(rows) + "\n")

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
