"""`mlrkit tag`: zero-shot ranked labels for real photos, folders, output formats and the errors."""

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import real_data
from test_recipe_run import make_dataset

from mlrkit.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The first two VOC 2007 trainval photos whose only label is cat, and the first whose only one is dog
CAT_1, CAT_2, DOG = "000077.jpg", "000122.jpg", "000036.jpg"
VOC_PHOTOS = "VOCdevkit/VOC2007/JPEGImages"


@pytest.fixture(scope="module", autouse=True)
def _label_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLRKIT_CACHE", str(tmp_path_factory.mktemp("mlrkit-cache")))
        yield


@pytest.fixture
def photos() -> Path:
    return real_data("voc2007") / VOC_PHOTOS


def tag(capsys, *args) -> tuple[int, str, str]:
    code = main(["tag", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ranks(entry: dict) -> dict[str, int]:
    return {e["label"]: i for i, e in enumerate(entry["labels"])}


def test_real_photos_rank_their_animal_first(capsys, photos):
    code, out, err = tag(capsys, photos / CAT_1, photos / CAT_2, photos / DOG,
                         "--labels", "cat, aeroplane, dog, sofa", "--zero-shot", "conse")
    assert code == 0
    results = json.loads(out)
    assert [r["image"] for r in results] == [str(photos / n) for n in (CAT_1, CAT_2, DOG)]
    for entry in results[:2]:
        assert ranks(entry)["cat"] < ranks(entry)["aeroplane"]
        assert entry["labels"][0]["label"] == "cat" and entry["labels"][0]["score"] > 0.8
    assert results[2]["labels"][0]["label"] == "dog"
    assert all(len(r["labels"]) == 4 for r in results)  # 4 labels <= --top-k 5
    assert "ConSE" in err and "3/3" in err  # the progress bar, on stderr


def test_csv_top_k_and_threshold(capsys, photos):
    code, out, _ = tag(capsys, photos / CAT_1, photos / DOG, "--labels", "cat, aeroplane, dog",
                       "--format", "csv", "--top-k", "2", "--no-progress")
    rows = list(csv.reader(io.StringIO(out)))
    assert code == 0 and rows[0] == ["image", "rank", "label", "score", "on"]
    assert [(Path(r[0]).name, r[1], r[2], r[4]) for r in rows[1:]] == [
        (CAT_1, "1", "cat", "1"), (CAT_1, "2", "dog", "0"), (DOG, "1", "dog", "1"),
        (DOG, "2", "cat", "0")]  # calibrated probabilities: on from 0.5
    # the cat photo: cosines cat 0.88, dog 0.55, aeroplane 0.45 (MiniLM, "a photo of a {}",
    # T = 10), through the shipped calibration about 0.93, 0.04 and 0.01
    code, out, _ = tag(capsys, photos / CAT_1, "--labels", "cat, aeroplane, dog",
                       "--threshold", "0.7", "--no-progress")
    assert [e["label"] for e in json.loads(out)[0]["labels"]] == ["cat"]


def test_labels_file_and_folders_with_recursive(capsys, photos, tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(photos / CAT_1, folder / "a.jpg")
    shutil.copy(photos / DOG, folder / "sub" / "b.JPG")
    (folder / "notes.txt").write_text("not an image")
    labels = tmp_path / "labels.txt"
    labels.write_text("# candidates\ncat\n\naeroplane\ndog\n")
    code, out, _ = tag(capsys, folder, "--labels-file", labels, "--no-progress")
    assert code == 0 and [Path(r["image"]).name for r in json.loads(out)] == ["a.jpg"]
    code, out, _ = tag(capsys, folder, "--labels-file", labels, "--recursive", "--no-progress")
    results = json.loads(out)
    assert [Path(r["image"]).relative_to(folder).as_posix() for r in results] == [
        "a.jpg", "sub/b.JPG"]
    assert [r["labels"][0]["label"] for r in results] == ["cat", "dog"]
    assert {e["label"] for e in results[0]["labels"]} == {"cat", "aeroplane", "dog"}


@pytest.mark.parametrize(("args", "message"), [
    ([], "give the candidate labels with --labels"),
    (["--labels", " , "], "--labels: no labels in it"),
    (["--labels", "cat, Cat"], r"labels given more than once: \['Cat', 'cat'\]"),
    (["--labels", "cat, qwxzv", "--embeddings", "glove"],
     "--labels with --embeddings glove: words not in GloVe .*'qwxzv': 'qwxzv'; check the spelling"),
    (["--labels", "cat", "--template", "a {}", "--embeddings", "glove"],
     "--template applies to --embeddings minilm"),
    (["--labels", "cat", "--top-k", "0"], "--top-k is 0"),
])
def test_label_errors_are_one_line(capsys, photos, args, message):
    code, out, err = tag(capsys, photos / CAT_1, *args)
    assert code == 2 and out == ""
    assert err.startswith("mlrkit: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_image_errors_are_one_line(capsys, photos, tmp_path):
    code, _, err = tag(capsys, photos / CAT_1, tmp_path / "missing.jpg", "--labels", "cat")
    assert code == 2
    missing = tmp_path / "missing.jpg"
    assert err == f"mlrkit: error: {missing}: No such file or directory; check the path\n"
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    code, _, err = tag(capsys, tmp_path / "empty", "--labels", "cat")
    assert code == 2 and "no image files" in err and "add --recursive" in err
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    code, _, err = tag(capsys, tmp_path / "broken.jpg", "--labels", "cat")
    assert code == 2 and "1 image(s) could not be read" in err and "broken.jpg" in err


def test_checkpoint_of_a_closed_set_run_is_refused_listing_its_classes(capsys, photos, tmp_path):
    make_dataset(tmp_path / "data", n=16)
    recipe = {
        "name": "tiny",
        "data": {"dataset": "csv", "root": str(tmp_path / "data")},
        "features": {"encoder": "resnet18", "weights": None, "image_size": 32, "seed": 0,
                     "cache": str(tmp_path / "cache"), "num_workers": 0},
        "protocol": {"name": "full"},
        "method": {"name": "linear"},
        "train": {"epochs": 1, "batch_size": 8, "progress": False, "device": "cpu"},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", "--config", str(tmp_path / "tiny.yaml"),
                 "--run-dir", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    code, out, err = tag(capsys, photos / CAT_1, "--labels", "cat", "--checkpoint",
                         tmp_path / "run")
    assert code == 2 and out == ""
    assert (f"--checkpoint {tmp_path / 'run'}: method 'linear' is closed-set: it scores only the "
            f"3 classes it was trained on (red, green, blue)") in err
    code, _, err = tag(capsys, photos / CAT_1, "--labels", "cat", "--checkpoint", tmp_path)
    assert code == 2 and "not a run folder" in err


def test_uncalibrated_settings_say_so_and_mark_no_label_on(capsys, photos):
    code, out, err = tag(capsys, photos / CAT_1, "--labels", "cat, dog", "--embeddings", "glove",
                         "--no-progress")
    assert code == 0 and "no calibration ships for these settings: scores are cosines" in err
    assert [e["on"] for e in json.loads(out)[0]["labels"]] == [False, False]
    code, _, err = tag(capsys, photos / CAT_1, "--labels", "cat", "--threshold", "1.5")
    assert code == 2 and "--threshold 1.5: give a probability, 0 .. 1" in err


def test_a_truncated_photo_is_listed_and_skipped_unless_strict(capsys, photos, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(photos / CAT_1, folder / "a.jpg")
    data = (photos / DOG).read_bytes()
    (folder / "b.jpg").write_bytes(data[: len(data) // 2])  # a header, half the pixels
    out = tmp_path / "tags.csv"
    code, printed, err = tag(capsys, folder, "--labels", "cat, dog", "--format", "csv",
                             "--out", out, "--no-progress")
    assert code == 0 and printed == "" and "skipped 1 unreadable image(s)" in err
    assert str(folder / "b.jpg") in err
    rows = list(csv.reader(out.open()))
    assert {Path(r[0]).name for r in rows[1:]} == {"a.jpg"}
    code, _, err = tag(capsys, folder, "--labels", "cat", "--out", out, "--no-progress")
    assert code == 2 and "exists; give another --out or add --overwrite" in err
    code, _, err = tag(capsys, folder, "--labels", "cat", "--strict", "--no-progress")
    assert code == 2 and "1 image(s) could not be read; fix or remove them" in err
    with pytest.raises(SystemExit) as stop:  # argparse's usage error
        tag(capsys, folder, "--labels", "cat", "--batch-size", "0")
    assert stop.value.code == 2 and "--batch-size: 0: give at least 1" in capsys.readouterr().err


def test_the_out_file_name_sets_the_format_and_never_contradicts_it(capsys, tmp_path):
    from mlrkit.tagging import save_tags, tag_format

    assert tag_format(None, None) == "json" and tag_format("csv", None) == "csv"
    assert tag_format(None, "tags.CSV") == "csv" and tag_format("json", "tags.json") == "json"
    with pytest.raises(ValueError, match=r"--out tags.csv and --format json disagree; name the "
                                         r"file .json or give --format csv"):
        tag_format("json", "tags.csv")
    with pytest.raises(ValueError, match=r"--out tags.txt: cannot tell the format"):
        tag_format(None, "tags.txt")
    assert tag_format("csv", "tags.txt") == "csv"
    results = [{"image": "a.jpg", "labels": [{"label": "cat", "score": 0.9, "on": True}]}]
    save_tags(results, None, str(tmp_path / "tags.csv"))
    assert (tmp_path / "tags.csv").read_text().splitlines()[0] == "image,rank,label,score,on"
    with pytest.raises(ValueError, match="is a folder; give a file name"):
        save_tags(results, None, str(tmp_path), overwrite=True)


def test_dense_conse_ranks_the_animal_first_and_says_its_scores_are_cosines(capsys, photos):
    code, out, err = tag(capsys, photos / CAT_1, photos / DOG, "--labels", "cat, aeroplane, dog",
                         "--zero-shot", "dense-conse", "--no-progress")
    assert code == 0, err
    results = json.loads(out)
    assert [ranks(r)["cat" if i == 0 else "dog"] for i, r in enumerate(results)] == [0, 0]
    assert all(not e["on"] for r in results for e in r["labels"])  # uncalibrated: none on
    assert "scores are cosines" in err
