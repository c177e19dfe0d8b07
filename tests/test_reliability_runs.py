"""Run folders under faults: two trainers, a changed recipe on resume, a folder holding another run,
damaged files, a full disk, bad options. Every input fault is one line on stderr and exit code 2."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from test_recipe_run import make_dataset

from mlrkit.cli import main
from mlrkit.data import create_dataset
from mlrkit.engine.checkpoint import last_checkpoint
from mlrkit.engine.recipe import load_recipe
from mlrkit.engine.run import train_run
from mlrkit.engine.run_lock import LOCK_FILE, RunLockedError, run_lock
from mlrkit.loaders import CorruptFileError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A dataset, its feature cache, the recipe ``tiny.yaml`` and its finished 2-epoch ``run``."""
    root = tmp_path_factory.mktemp("reliability")
    make_dataset(root / "data")
    recipe = {
        "name": "tiny",
        "data": {"dataset": "csv", "root": str(root / "data")},
        "features": {"encoder": "resnet18", "weights": None, "image_size": 32, "seed": 0,
                     "cache": str(root / "cache"), "num_workers": 0},
        "protocol": {"name": "partial", "known": 0.5, "seed": 0},
        "method": {"name": "linear"},
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "progress": False, "device": "cpu"},
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", "--config", str(root / "tiny.yaml"), "--run-dir", str(root / "run")]) == 0
    return root


@pytest.fixture
def run(work, tmp_path) -> Path:
    """A private copy of the finished run, to damage."""
    return Path(shutil.copytree(work / "run", tmp_path / "run"))


def cli(capsys, *args) -> tuple[int, str]:
    """Exit code and stderr of ``mlrkit *args``."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_error_line(code: int, err: str, *needles: str) -> None:
    """Exit code 2 and exactly one ``mlrkit: error: ...; ...`` line that contains ``needles``."""
    assert code == 2, err
    assert err.startswith("mlrkit: error: ") and err.count("\n") == 1, err
    assert "; " in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def train_args(work: Path, run_dir: Path, *extra: str) -> list:
    return ["train", "--config", work / "tiny.yaml", "--run-dir", run_dir, *extra]


def unchecked(run: Path) -> None:
    """The run as one trained before checksums.json existed: its files are read unverified, so
    the loaders' own checks are what a damaged file meets (see the checksum test below)."""
    (run / "checksums.json").unlink()


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def dead_pid() -> int:
    """The PID of a process that has ended (and was reaped)."""
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


# --- 1. one trainer per run folder ---------------------------------------------------------------


def test_second_trainer_stops_naming_the_live_holder_and_a_killed_ones_lock_is_taken_over(
    work, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "mlrkit.cli", *map(str, train_args(work, run_dir)),
         "--set", "train.epochs=100000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
    )
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "metrics.jsonl").is_file():  # training, under its lock
            assert first.poll() is None and time.monotonic() < deadline, "first run ended"
            time.sleep(0.05)
        lines = (run_dir / "metrics.jsonl").read_text().count("\n")
        code, err = cli(capsys, *train_args(work, run_dir, "--overwrite"))
        assert_error_line(code, err, f"in use by PID {first.pid} on host", str(run_dir))
        assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == first.pid
        assert (run_dir / "metrics.jsonl").read_text().count("\n") >= lines  # not cleared
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == first.pid  # left behind

    code, err = cli(capsys, *train_args(work, run_dir, "--overwrite", "--set", "train.epochs=1"))
    assert code == 0, err
    assert not (run_dir / LOCK_FILE).exists()
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 1


def test_a_second_process_cannot_take_a_held_lock(tmp_path):
    code = "import sys\nfrom mlrkit.engine.run_lock import run_lock\nwith run_lock(sys.argv[1]): pass"
    with run_lock(tmp_path):
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False,
                              capture_output=True,
                              text=True, timeout=120, env=ENV)
    assert done.returncode == 1
    assert f"RunLockedError: {tmp_path}: run folder is in use by PID {os.getpid()}" in done.stderr
    assert not (tmp_path / LOCK_FILE).exists()  # released by its holder, untouched by the other


def test_stale_lock_of_a_dead_process_is_taken_over_and_released(work, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_FILE).write_text(json.dumps({"pid": dead_pid(),
                                                 "host": socket.gethostname()}))
    results = train_run(load_recipe(work / "tiny.yaml", ["train.epochs=1"]), run_dir)
    assert results["best_epoch"] == 0
    assert not (run_dir / LOCK_FILE).exists()
    assert not list(run_dir.glob(f"{LOCK_FILE}*"))  # no leftover of the take-over either


@pytest.mark.parametrize("holder", [{"pid": 1, "host": "another-host"}, "not json"],
                         ids=["another-host", "unreadable"])
def test_lock_of_another_host_or_unreadable_is_never_taken_over(holder, work, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    text = json.dumps(holder) if isinstance(holder, dict) else holder
    (run_dir / LOCK_FILE).write_text(text)
    match = "PID 1 on host 'another-host'" if isinstance(holder, dict) else "delete it"
    with pytest.raises(RunLockedError, match=match):
        train_run(load_recipe(work / "tiny.yaml"), run_dir)
    assert (run_dir / LOCK_FILE).read_text() == text
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]


def test_lock_is_released_when_training_fails(work, tmp_path):
    run_dir = tmp_path / "run"
    recipe = load_recipe(work / "tiny.yaml", [f"data.root={tmp_path / 'gone'}"])
    with pytest.raises(ValueError, match="does not exist"):
        train_run(recipe, run_dir)
    assert not (run_dir / LOCK_FILE).exists()


# --- 2. one run per folder -----------------------------------------------------------------------


def test_resume_with_another_recipe_names_the_differing_key(work, run, capsys):
    before = (run / "metrics.jsonl").read_text()
    code, err = cli(capsys, *train_args(work, run, "--resume", "--set", "protocol.known=0.9"))
    assert_error_line(code, err, str(run / "config.yaml"),
                      "protocol.known is 0.5 in the run, 0.9 now", "--overwrite")
    assert (run / "metrics.jsonl").read_text() == before


def test_resume_may_change_only_progress_workers_and_device(work, run, capsys):
    code, err = cli(capsys, *train_args(work, run, "--resume", "--set", "train.progress=true",
                                        "--set", "train.num_workers=0",
                                        "--set", "features.num_workers=1"))
    assert code == 0, err
    assert json.loads((run / "results.json").read_text())["best_epoch"] == json.loads(
        (work / "run" / "results.json").read_text())["best_epoch"]
    code, err = cli(capsys, *train_args(work, run, "--resume", "--set", "train.lr=0.02"))
    assert_error_line(code, err, "train.lr is 0.01 in the run, 0.02 now")


def test_new_run_into_a_folder_holding_one_needs_overwrite(work, run, capsys):
    before = sorted(p.name for p in run.iterdir())
    code, err = cli(capsys, *train_args(work, run))
    assert_error_line(code, err, f"{run}: already holds a run (config.yaml, run.json, mask.npz",
                      "--resume", "--overwrite")
    assert sorted(p.name for p in run.iterdir()) == before


def test_overwrite_removes_the_old_runs_files_and_only_those(work, run, capsys):
    old = run / "checkpoints" / "epoch-0099"
    shutil.copytree(run / "checkpoints" / "best", old)
    (run / "notes.txt").write_text("mine")
    stale = [run / "class_split.json", run / "pseudo_labels.npz"]  # of a zero-shot or VLPL run
    for path in stale:
        path.write_text("old")
    code, err = cli(capsys, *train_args(work, run, "--overwrite", "--set", "train.epochs=1"))
    assert code == 0, err
    assert not old.exists() and (run / "notes.txt").read_text() == "mine"
    assert not any(path.exists() for path in stale)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best", "epoch-0000", "last.json"]
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [0]


def test_overwrite_with_data_that_cannot_be_read_leaves_the_old_run_whole(work, run, capsys):
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, err = cli(capsys, *train_args(work, run, "--overwrite", "--set",
                                        f"data.root={work / 'no-such-folder'}"))
    assert_error_line(code, err, "no-such-folder does not exist")
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # nothing removed, nothing rewritten


def test_resume_into_a_folder_without_config_starts_a_new_run(work, tmp_path, capsys):
    code, err = cli(capsys, *train_args(work, tmp_path / "new", "--resume",
                                        "--set", "train.epochs=1"))
    assert code == 0, err
    assert (tmp_path / "new" / "results.json").is_file()


def test_resume_without_config_but_with_run_files_is_refused(work, run, capsys):
    (run / "config.yaml").unlink()
    code, err = cli(capsys, *train_args(work, run, "--resume"))
    assert_error_line(code, err, "files of a run but no config.yaml to resume from",
                      "--overwrite")


def test_resume_and_overwrite_together_are_refused(work, run, capsys):
    code, err = cli(capsys, *train_args(work, run, "--resume", "--overwrite"))
    assert_error_line(code, err, "give one of them")


# --- 3. damaged files and bad input: one line, exit code 2 ---------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "not-safetensors"])
def test_damaged_checkpoint_names_the_file(damage, run, capsys):
    unchecked(run)
    weights = run / "checkpoints" / "best" / "model.safetensors"
    if damage == "truncated":
        truncate(weights)
    else:
        weights.write_text("this is not a safetensors file")
    code, err = cli(capsys, "eval", "--checkpoint", run)
    assert_error_line(code, err, str(weights), "not a complete safetensors file",
                      "train the run again")


def test_checkpoint_of_another_shape_names_the_file(run, capsys):
    unchecked(run)
    weights = run / "checkpoints" / "best" / "model.safetensors"
    save_file({"head.1.weight": torch.zeros(3, 7), "head.1.bias": torch.zeros(3)}, weights)
    code, err = cli(capsys, "eval", "--checkpoint", run)
    assert_error_line(code, err, str(weights), "does not fit this model", "size mismatch")


@pytest.mark.parametrize("name", ["state.json", "last.json"])
def test_truncated_checkpoint_json_names_the_file_on_resume(name, work, run, capsys):
    ckpt = run / "checkpoints"
    path = ckpt / name if name == "last.json" else last_checkpoint(ckpt) / name
    truncate(path)
    code, err = cli(capsys, *train_args(work, run, "--resume"))
    assert_error_line(code, err, f"{path}: not valid JSON", "train the run again")


def test_truncated_run_json_names_the_file(run, capsys):
    truncate(run / "run.json")
    code, err = cli(capsys, "eval", "--checkpoint", run)
    assert_error_line(code, err, f"{run / 'run.json'}: not valid JSON", "delete it")


def test_truncated_mask_names_the_file(run, capsys):
    unchecked(run)
    truncate(run / "mask.npz")
    code, err = cli(capsys, "eval", "--checkpoint", run)
    assert_error_line(code, err, f"{run / 'mask.npz'}: not an mlrkit mask file",
                      "write it again")


def test_truncated_feature_cache_meta_names_the_file(work, tmp_path, capsys):
    cache = Path(shutil.copytree(work / "cache", tmp_path / "cache"))
    truncate(cache / "meta.json")
    code, err = cli(capsys, *train_args(work, tmp_path / "run", "--set",
                                        f"features.cache={cache}"))
    assert_error_line(code, err, f"{cache / 'meta.json'}: not valid JSON", "--overwrite")


def test_torn_last_metrics_line_is_dropped_on_resume_a_damaged_earlier_one_named(
    work, run, capsys
):
    log = run / "metrics.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines) + '\n{"epoch": 2, "lo')  # killed while writing epoch 2
    code, err = cli(capsys, *train_args(work, run, "--resume"))
    assert code == 0, err
    assert log.read_text().splitlines() == lines
    log.write_text('{"epoch": 0, "lo\n' + lines[1] + "\n")
    code, err = cli(capsys, *train_args(work, run, "--resume"))
    assert_error_line(code, err, f"{log}:1: not a JSON record", "delete the damaged line")


def test_set_value_that_is_not_yaml_names_the_option(work, tmp_path, capsys):
    code, err = cli(capsys, *train_args(work, tmp_path / "run", "--set", "train.lr=[0.1"))
    assert_error_line(code, err, "--set train.lr=[0.1: the value is not valid YAML")
    assert not (tmp_path / "run").exists()


def test_a_key_given_twice_in_a_recipe_or_a_set_value_is_refused_naming_the_lines(
    work, tmp_path, capsys
):
    recipe = tmp_path / "twice.yaml"  # PyYAML alone would train at lr 0.5 without a word
    recipe.write_text(f"base: {work / 'tiny.yaml'}\nname: twice\n"
                      "train: {lr: 0.05, epochs: 1, lr: 0.5}\n")
    code, err = cli(capsys, "train", "--config", recipe, "--run-dir", tmp_path / "run")
    assert_error_line(code, err, f"recipe {recipe}:3 is not valid YAML: key 'lr' given twice "
                                 f"(lines 3 and 3); keep one")
    code, err = cli(capsys, *train_args(work, tmp_path / "run", "--set",
                                        "data.options={a: 1, a: 2}"))
    assert_error_line(code, err, "--set data.options={a: 1, a: 2}: the value is not valid YAML "
                                 "(key 'a' given twice")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("override", "message"), [
    ("train.lr=-0.01", "train.lr=-0.01 must be > 0.0"),
    ("train.lr=0", "train.lr=0.0 must be > 0.0"),
    ("train.weight_decay=-1e-4", "train.weight_decay=-0.0001 must be >= 0.0"),
    ("train.momentum=1.5", "train.momentum=1.5 must be >= 0.0 and <= 1.0"),
    ("train.grad_clip=0", "train.grad_clip=0.0 must be > 0; give a positive norm, or null"),
])
def test_training_numbers_out_of_their_range_are_refused(work, tmp_path, capsys, override,
                                                         message):
    code, err = cli(capsys, *train_args(work, tmp_path / "run", "--set", override))
    assert_error_line(code, err, message)
    assert not (tmp_path / "run").exists()


def test_an_unknown_reader_option_is_one_line_listing_the_options(work, capsys):
    code, err = cli(capsys, "data", "summary", "--dataset", "csv", "--root", work / "data",
                    "-o", "colour=1")
    assert_error_line(code, err, "dataset 'csv' has no reader option colour",
                      "its options: allow_outside_root, check_images, classes, extra_splits, "
                      "labels_file, unlisted")


def test_permission_error_names_the_path(work, capsys):
    code, err = cli(capsys, *train_args(work, Path("/sys/mlrkit-reliability-test/run")))
    assert_error_line(code, err, "/sys/mlrkit-reliability-test", "check the permissions")


def test_file_too_large_names_the_file_being_written(work, tmp_path):
    import resource

    def limit_file_size() -> None:  # run.json and the mask fit, a checkpoint does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "mlrkit.cli", *map(str, train_args(work, run_dir))],
        check=False, capture_output=True, text=True, timeout=300, env=ENV,
        preexec_fn=limit_file_size,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"mlrkit: error: {run_dir}/checkpoints/"), line
    assert "model.safetensors: File too large; free disk space" in line
    assert not (run_dir / LOCK_FILE).exists()


def test_extract_under_a_file_size_limit_names_the_cache_file(work, tmp_path):
    import resource

    def limit_file_size() -> None:  # the metadata fits, the pooled features do not
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))

    out = tmp_path / "cache"
    done = subprocess.run(
        [sys.executable, "-m", "mlrkit.cli", "extract", "--dataset", "csv", "--root",
         str(work / "data"), "--encoder", "resnet18", "--image-size", "32", "--spatial",
         "--workers", "0", "--out", str(out)],
        check=False, capture_output=True, text=True, timeout=300, env=ENV,
        preexec_fn=limit_file_size,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"mlrkit: error: {out}/"), line
    assert ".npy: File too large; free disk space" in line


@pytest.mark.parametrize("content", ["pickled-object", "truncated"])
def test_unreadable_encoder_weights_name_the_file(content, work, tmp_path, capsys):
    import pickle

    weights = tmp_path / "weights.pth"
    if content == "pickled-object":
        weights.write_bytes(pickle.dumps({"conv1.weight": object()}))
    else:
        torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, weights)
        truncate(weights)
    code, err = cli(capsys, "extract", "--dataset", "csv", "--root", work / "data", "--encoder",
                    "resnet18", "--weights", weights, "--out", tmp_path / "cache")
    assert_error_line(code, err, f"{weights}: not a readable state dict of tensors",
                      "save the weights with safetensors")


def test_debug_shows_the_traceback_instead(run):
    truncate(run / "run.json")
    with pytest.raises(CorruptFileError, match="run.json"):
        main(["--debug", "eval", "--checkpoint", str(run)])


def test_byte_order_mark_is_accepted_in_split_and_label_files(tmp_path):
    make_dataset(tmp_path / "data")
    for name in ("split.csv", "labels.csv"):
        path = tmp_path / "data" / name
        path.write_text("\ufeff" + path.read_text(), encoding="utf-8")
    data = create_dataset("csv", tmp_path / "data")
    assert {s: int((data.splits == s).sum()) for s in data.split_names()} == {
        "train": 24, "val": 12, "test": 12}
    assert data.class_names == ["red", "green", "blue"]


@pytest.mark.parametrize("top_k", ["-3", "0"])
def test_predict_top_k_below_one_is_refused(top_k, work, capsys):
    code, err = cli(capsys, "predict", "--checkpoint", work / "run",
                    work / "data" / "images" / "3.jpg", "--top-k", top_k)
    assert_error_line(code, err, f"top_k (--top-k) is {top_k}; give at least 1")


def test_predict_top_k_above_the_classes_lists_all_with_a_note(work, capsys):
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(work / "run"),
                 str(work / "data" / "images" / "3.jpg"), "--top-k", "10"]) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)[0]["labels"]) == 3
    assert err == ("mlrkit: note: --top-k 10 is more than the run's 3 classes; listing all of "
                   "them\n")
    np.testing.assert_array_equal(
        sorted(e["label"] for e in json.loads(out)[0]["labels"]), ["blue", "green", "red"])


# --- 4. real data under CI -----------------------------------------------------------------------


def test_missing_real_data_skips_locally_but_fails_under_ci(monkeypatch):
    from conftest import real_data

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must provide ../shared/data"):
        real_data("no-such-data-set")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no-such-data-set"):
        real_data("no-such-data-set")


def test_an_unfinished_run_is_refused_unless_allowed_saying_how_far_it_got(work, run, capsys):
    (run / "results.json").unlink()  # as if training were still going on
    code, err = cli(capsys, "eval", "--checkpoint", run)
    assert_error_line(code, err, f"run {run} has not finished (", "epoch(s) logged",
                      "--allow-unfinished")
    code, err = cli(capsys, "predict", "--checkpoint", run, work / "data" / "images" / "0.jpg")
    assert code == 2 and "has not finished" in err
    code = main(["eval", "--checkpoint", str(run), "--allow-unfinished"])
    captured = capsys.readouterr()
    assert code == 0 and "has not finished" in captured.err and "test_mAP" in captured.out


def test_training_with_no_known_label_is_refused_before_it_starts(work, tmp_path, capsys):
    data = Path(shutil.copytree(work / "data", tmp_path / "data"))  # the shared data stays
    lines = (data / "labels.csv").read_text().splitlines()
    (data / "labels.csv").write_text(
        "\n".join([lines[0], *(line.split(",")[0] + ",,," for line in lines[1:])]) + "\n")
    code, err = cli(capsys, *train_args(work, tmp_path / "none", "--set", "protocol.name=observed",
                                        "--set", f"data.root={data}",
                                        "--set", f"features.cache={tmp_path / 'cache'}"))
    last = err.splitlines()[-1]  # after the feature extraction's progress bar
    assert code == 2 and last.startswith("mlrkit: error: ") and "has no known label" in last
    assert "give some labels" in last and not (tmp_path / "none").exists()


def test_equal_or_zero_label_vectors_are_refused_before_training(work, tmp_path, capsys):
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)  # red = green
    np.save(tmp_path / "vec.npy", vectors)
    (tmp_path / "vec.names.txt").write_text("red\ngreen\nblue\n")
    args = train_args(work, tmp_path / "emb", "--set", "label_embeddings.source=file",
                      "--set", f"label_embeddings.path={tmp_path / 'vec.npy'}",
                      "--set", "method.name=devise")
    code, err = cli(capsys, *args)
    assert_error_line(code, err, "classes ['red', 'green'] have the same vector")
    vectors[1] = 0
    np.save(tmp_path / "vec.npy", vectors)
    code, err = cli(capsys, *args)
    assert_error_line(code, err, "the vector of ['green'] is all zeros")


def test_outputs_never_replace_what_they_should_not(work, run, tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("image,red\na.jpg,1\n")
    code, err = cli(capsys, "report", run, "--out", labels)
    assert_error_line(code, err, f"--out {labels}: the report is an HTML page; name it .html")
    page = tmp_path / "page.html"
    page.write_text("image,red\n")  # a label file under an .html name
    code, err = cli(capsys, "report", run, "--out", page, "--overwrite")
    assert_error_line(code, err, "exists and is not an HTML page")
    assert labels.read_text() == "image,red\na.jpg,1\n" and page.read_text() == "image,red\n"
    out = tmp_path / "recovered"
    assert main(["recover", "--checkpoint", str(run), "--out", str(out)]) == 0
    before = (out / "completed.csv").read_bytes()
    code, err = cli(capsys, "recover", "--checkpoint", run, "--out", out)
    assert_error_line(code, err, "already holds completed.csv", "--overwrite")
    assert (out / "completed.csv").read_bytes() == before


@pytest.mark.parametrize("edit", ["config", "checkpoint", "removed"])
def test_a_run_whose_files_changed_since_training_is_refused_naming_them(edit, run, capsys):
    if edit == "config":  # e.g. test_split pointed at the training photos
        config = run / "config.yaml"
        config.write_text(config.read_text().replace("test_split: test", "test_split: train"))
        changed = "config.yaml"
    elif edit == "checkpoint":
        truncate(run / "checkpoints" / "best" / "model.safetensors")
        changed = "checkpoints/best/model.safetensors"
    else:
        (run / "calibration.json").unlink()
        changed = "calibration.json"
    for command in (["eval", "--checkpoint", run], ["report", run, "--out", run.parent / "r.html"]):
        code, err = cli(capsys, *command)
        assert_error_line(code, err, f"run {run}: {changed} changed since training ended",
                          "restore the files or train again")


def test_a_run_whose_data_moved_says_how_to_give_it_the_new_place(run, tmp_path, capsys):
    unchecked(run)
    info = json.loads((run / "run.json").read_text())
    info["data"]["root"] = str(tmp_path / "moved-away")  # as after 'mv data elsewhere'
    (run / "run.json").write_text(json.dumps(info))
    for command in (["eval", "--checkpoint", run], ["recover", "--checkpoint", run, "--out",
                                                    tmp_path / "rec"]):
        code, err = cli(capsys, *command)
        assert_error_line(code, err, f"{tmp_path / 'moved-away'}: the data run {run} was trained "
                                     f"on is no longer there", "--dataset csv --root NEW_FOLDER")
