"""The COCO reader on the real COCO-MINI files (../shared/data/coco-mini) and on broken copies."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import real_data

from mlrkit.data import DataFormatError, create_dataset


@pytest.fixture
def coco_mini() -> Path:
    return real_data("coco-mini")


def test_reads_coco_mini(coco_mini):
    data = create_dataset("coco", coco_mini)
    assert data.name == "coco2017"
    assert data.labels.shape == (159, 80) and data.labels.dtype == np.int8
    assert set(np.unique(data.labels)) == {0, 1}
    assert [(s, int((data.splits == s).sum())) for s in data.split_names()] == [
        ("train", 80),
        ("val", 79),
    ]
    assert data.image_ids()[80].startswith("val2017/")
    assert all(p.is_file() for p in data.image_paths)
    assert abs(data.labels.sum(1).mean() - 3.7) < 0.05
    assert data.extras["num_objects"].sum() == 739 + 624  # every instance, crowd included


def test_classes_and_one_image_match_the_json(coco_mini):
    data = create_dataset("coco2017", coco_mini, splits="val")
    raw = json.loads((coco_mini / "annotations" / "instances_val2017.json").read_text())
    categories = sorted(raw["categories"], key=lambda c: c["id"])
    assert data.class_names == [c["name"] for c in categories]
    assert len(data.class_names) == 80 and data.class_names[0] == "person"

    image = raw["images"][5]
    name_of = {c["id"]: c["name"] for c in categories}
    expected = {
        name_of[a["category_id"]] for a in raw["annotations"] if a["image_id"] == image["id"]
    }
    i = int(np.flatnonzero(data.extras["image_id"] == image["id"])[0])
    assert data.image_paths[i].name == image["file_name"]
    assert {data.class_names[j] for j in np.flatnonzero(data.labels[i] == 1)} == expected
    assert len(expected) >= 2


def write_coco(root: Path, annotations: list, images: int = 3) -> Path:
    """A tiny COCO-format val2014 split with categories 1 'cat', 5 'dog', 3 'bird'."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "val2014").mkdir(exist_ok=True)
    records = []
    for k in range(images):
        name = f"COCO_val2014_{k:012d}.jpg"
        (root / "val2014" / name).write_bytes(b"")
        records.append({"id": 100 + k, "file_name": name, "width": 4, "height": 3})
    path = root / "annotations" / "instances_val2014.json"
    categories = [{"id": 5, "name": "dog"}, {"id": 1, "name": "cat"}, {"id": 3, "name": "bird"}]
    doc = {"images": records, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(doc, indent=1))
    return path


def ann(image_id: int, category_id: int, iscrowd: int = 0) -> dict:
    return {"id": 1, "image_id": image_id, "category_id": category_id, "iscrowd": iscrowd}


def test_crowd_counts_and_empty_images_are_kept(tmp_path):
    write_coco(tmp_path, [ann(100, 5), ann(100, 1, iscrowd=1), ann(101, 3), ann(101, 3)])
    data = create_dataset("coco2014", tmp_path, splits=["val"])
    assert data.class_names == ["cat", "bird", "dog"]  # ascending category id
    np.testing.assert_array_equal(data.labels, [[1, 0, 1], [0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(data.extras["num_objects"], [2, 2, 0])
    np.testing.assert_array_equal(data.extras["image_id"], [100, 101, 102])


def test_missing_annotation_file_is_an_error(tmp_path):
    write_coco(tmp_path, [])
    with pytest.raises(DataFormatError, match=r"instances_train2014\.json not found"):
        create_dataset("coco2014", tmp_path)
    with pytest.raises(DataFormatError, match=r"found no instances_"):
        create_dataset("coco", tmp_path / "annotations")


def test_malformed_json_gives_file_and_line(tmp_path):
    path = write_coco(tmp_path, [ann(100, 5)])
    path.write_text(path.read_text().replace('"category_id": 5', '"category_id" 5'))
    with pytest.raises(DataFormatError, match=r"instances_val2014\.json:\d+: malformed JSON"):
        create_dataset("coco", tmp_path, splits="val")


def test_unknown_category_id_names_the_known_ids(tmp_path):
    write_coco(tmp_path, [ann(100, 5), ann(101, 7)])
    with pytest.raises(DataFormatError, match=r"annotations\[1\] has category_id 7.*\[1, 3, 5\]"):
        create_dataset("coco", tmp_path, splits="val")


def test_annotation_without_a_field_or_image_is_an_error(tmp_path):
    write_coco(tmp_path, [{"image_id": 100}])
    with pytest.raises(DataFormatError, match=r"annotations\[0\] needs a field 'category_id'"):
        create_dataset("coco", tmp_path, splits="val")
    write_coco(tmp_path, [ann(100, 5), ann(999, 5)])
    with pytest.raises(DataFormatError, match=r"annotations\[1\] refers to image_id 999"):
        create_dataset("coco", tmp_path, splits="val")


def test_missing_images_are_listed(tmp_path):
    write_coco(tmp_path, [ann(100, 5)])
    (tmp_path / "val2014" / "COCO_val2014_000000000002.jpg").unlink()
    with pytest.raises(DataFormatError, match=r"1 of 3 file\(s\) not found.*000000000002\.jpg"):
        create_dataset("coco", tmp_path, splits="val")
    assert len(create_dataset("coco", tmp_path, splits="val", check_images=False)) == 3


def test_file_name_leading_outside_the_root_names_the_record(tmp_path):
    root = tmp_path / "coco"
    path = write_coco(root, [ann(100, 5)])
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "x.jpg").write_bytes(b"")
    doc = json.loads(path.read_text())
    doc["images"][1]["file_name"] = "../../secret/x.jpg"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataFormatError, match=r"instances_val2014\.json: images\[1\]\.file_name: "
                                              r"image .*outside the dataset root"):
        create_dataset("coco", root, splits="val")
    assert len(create_dataset("coco", root, splits="val", allow_outside_root=True)) == 3
