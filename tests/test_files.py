"""Files as a user expects them: written atomically with the modes ``open`` would give."""

import os
import stat

import pytest

from mlrkit import atomic
from mlrkit.atomic import atomic_write


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    atomic._umask.cache_clear()
    yield
    os.umask(old)
    atomic._umask.cache_clear()


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_files_respect_the_umask_and_replacements_keep_their_mode(tmp_path, umask_022):
    with atomic_write(tmp_path / "out" / "results.json", "w") as f:
        f.write("{}")
    assert _mode(tmp_path / "out" / "results.json") == 0o644
    (tmp_path / "labels.csv").write_text("old")
    (tmp_path / "labels.csv").chmod(0o600)  # the user's own choice survives a rewrite
    with atomic_write(tmp_path / "labels.csv", "w") as f:
        f.write("new")
    assert _mode(tmp_path / "labels.csv") == 0o600
    assert (tmp_path / "labels.csv").read_text() == "new"


def test_a_run_and_its_outputs_are_readable_by_others_under_umask_022(tmp_path, umask_022):
    from test_recipe_run import make_dataset

    from mlrkit.cli import main

    make_dataset(tmp_path / "data")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: modes\ndata: {{dataset: csv, root: {tmp_path / 'data'}}}\n"
        f"features: {{encoder: resnet18, weights: null, image_size: 32, num_workers: 0, "
        f"cache: {tmp_path / 'cache'}}}\n"
        "protocol: {name: partial, known: 0.5}\n"
        "train: {epochs: 1, batch_size: 8, progress: false, device: cpu}\n")
    run = tmp_path / "run"
    assert main(["train", "--config", str(recipe), "--run-dir", str(run)]) == 0
    assert main(["recover", "--checkpoint", str(run), "--out", str(tmp_path / "rec")]) == 0
    written = [run / "config.yaml", run / "run.json", run / "results.json",
               tmp_path / "rec" / "completed.csv", tmp_path / "rec" / "recovered_long.csv"]
    assert {p.name: _mode(p) for p in written} == {p.name: 0o644 for p in written}


def test_a_relative_root_error_names_its_base_and_a_failed_run_leaves_no_folder(
    tmp_path, monkeypatch, capsys
):
    from mlrkit.cli import main

    (tmp_path / "recipes" / "data").mkdir(parents=True)
    recipe = tmp_path / "recipes" / "r.yaml"
    recipe.write_text("name: x\ndata: {dataset: csv, root: data}\n"
                      "features: {encoder: resnet18, weights: null}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(recipe), "--run-dir", "run"]) == 2
    said = capsys.readouterr().err
    assert f"does not exist relative to the working folder {tmp_path}" in said
    assert str(tmp_path / "recipes" / "data") in said and "which exists" in said
    assert not (tmp_path / "run").exists()  # refused before anything was created
    recipe.write_text(recipe.read_text().replace("root: data", "root: missing"))
    assert main(["train", "--config", str(recipe), "--run-dir", "run"]) == 2
    assert f"dataset root missing does not exist or is not a folder (resolved against the " \
           f"working folder {tmp_path})" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # failed before its first epoch: folder removed


def test_text_files_with_a_bom_read_and_other_encodings_are_named(tmp_path, capsys):
    from mlrkit.data import create_dataset
    from mlrkit.tagging import parse_labels
    from mlrkit.text_files import TextEncodingError

    (tmp_path / "labels.txt").write_bytes("\ufeffcat\ndog\n".encode())
    assert parse_labels(None, str(tmp_path / "labels.txt")) == ["cat", "dog"]  # not '\ufeffcat'
    (tmp_path / "latin.txt").write_bytes("café\n".encode("latin-1"))
    with pytest.raises(TextEncodingError, match=r"latin.txt: not UTF-8 text .*save it as UTF-8"):
        parse_labels(None, str(tmp_path / "latin.txt"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "labels.csv").write_bytes("image,cat\na.jpg,1\n".encode("utf-16"))
    with pytest.raises(TextEncodingError, match=r"labels.csv: not UTF-8 text \(UTF-16 at byte 0\)"):
        create_dataset("csv", tmp_path / "data")


@pytest.mark.parametrize(("unseen", "message"), [
    ("[cat, cat]", r"unseen lists \['cat'\] more than once"),
    ("[]", "unseen lists no class"),
])
def test_a_zero_shot_unseen_list_must_name_each_class_once(tmp_path, unseen, message):
    from mlrkit.engine.recipe import load_recipe

    (tmp_path / "data").mkdir()
    (tmp_path / "r.yaml").write_text(
        f"name: z\ndata: {{dataset: csv, root: {tmp_path / 'data'}}}\n"
        "features: {encoder: resnet18, weights: null}\nlabel_embeddings: {source: glove}\n"
        f"method: {{name: devise}}\nprotocol: {{name: zero_shot, unseen: {unseen}}}\n")
    with pytest.raises(ValueError, match=message):
        load_recipe(tmp_path / "r.yaml")
