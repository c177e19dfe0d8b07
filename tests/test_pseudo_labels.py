"""VLPL's pseudo-labels and the losses that use them (EM_PL, EM_PL_ASL), EM + APL's labelling
step on hand-built predictions, and a recipe with a CLIP teacher from a local weights file."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from test_encoders_clip import SMALL_VIT_B_16
from test_recipe_run import make_dataset

import mlrkit.encoders.clip as clip_module
import mlrkit.engine.prepare as prepare_module
import mlrkit.engine.pseudo_labels as pseudo_labels_module
from mlrkit.cli import main
from mlrkit.engine.pseudo_labels import pseudo_label_quality, vlpl_pseudo_labels
from mlrkit.engine.recipe import load_recipe
from mlrkit.engine.run import train_run
from mlrkit.engine.run_files import PSEUDO_FILE
from mlrkit.methods import StepInfo, TaskSpec
from mlrkit.methods.losses import (
    apl_counts,
    apl_pick,
    create_loss,
    em_apl_loss,
    em_pl_asl_loss,
    em_pl_loss,
)
from mlrkit.zero_shot import clip_scores

EPS = 1e-5
LOGITS = torch.tensor([[2.0, -1.0, 0.5, -3.0], [0.0, 1.5, -0.5, 1.0]])
TARGETS = torch.tensor([[1, -1, -1, -1], [-1, 0, -1, -1]], dtype=torch.int8)
PSEUDO = torch.tensor([[1, 1, 0, -1], [1, -1, -1, 0]], dtype=torch.int8)


def nl(x):
    return -np.log(x + EPS)


def entropy(p):
    return p * nl(p) + (1 - p) * nl(1 - p)


def test_vlpl_rule_is_a_temperature_softmax_over_classes_then_thresholds():
    scores = np.array([[0.30, 0.29, 0.10, 0.28], [0.2, 0.2, 0.2, 0.2]])
    out = vlpl_pseudo_labels(scores, tau=0.01, theta=0.3, negatives=1)
    e = np.exp(scores / 0.01 - (scores / 0.01).max(axis=1, keepdims=True))
    np.testing.assert_allclose(out.q, e / e.sum(axis=1, keepdims=True), rtol=1e-6)
    # row 0: q = .665, .245, .0000, .090 -> one positive, the lowest class negative;
    # row 1: q = .25 everywhere -> no positive; the first of the tied lowest is the negative
    np.testing.assert_array_equal(out.labels, [[1, -1, 0, -1], [0, -1, -1, -1]])
    assert out.labels.dtype == np.int8
    hot = vlpl_pseudo_labels(scores, tau=1.0, theta=0.22)  # flat: .264 .261 .216 .259, .25
    np.testing.assert_array_equal(hot.labels, [[1, 1, -1, 1], [1, 1, 1, 1]])


def test_pseudo_label_quality_counts_positive_hits():
    labels = np.array([[1, -1, 1], [-1, 1, 0]], dtype=np.int8)
    truth = np.array([[1, 1, 0], [0, 1, 0]], dtype=np.int8)
    assert pseudo_label_quality(labels, truth) == {
        "positives_per_image": 1.5, "precision": pytest.approx(2 / 3), "recall": 2 / 3}


def test_em_pl_entry_by_entry():
    p = torch.sigmoid(LOGITS).numpy().astype(np.float64)
    alpha, beta = 0.2, 0.7
    expected = np.array([
        # known positive; unknown+PL positive; unknown+PL negative (nothing); plain unknown
        [nl(p[0, 0]), beta * (0.9 * nl(p[0, 1]) + 0.1 * nl(1 - p[0, 1])), 0.0,
         -alpha * entropy(p[0, 3])],
        # unknown+PL positive; known negative; plain unknown; unknown+PL negative
        [beta * (0.9 * nl(p[1, 0]) + 0.1 * nl(1 - p[1, 0])), nl(1 - p[1, 1]),
         -alpha * entropy(p[1, 2]), 0.0],
    ]).mean()
    assert float(em_pl_loss(LOGITS, TARGETS, PSEUDO, alpha, beta)) == pytest.approx(expected,
                                                                                     rel=1e-6)


@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_em_pl_asl_focal_weights_and_the_probability_shift(clip):
    p = torch.sigmoid(LOGITS).numpy().astype(np.float64)
    m = np.maximum(p - clip, 0)

    def pos(x):
        return (1 - x) ** 2 * nl(x)

    def neg(i, j):
        return m[i, j] ** 4 * nl(1 - m[i, j])

    expected = np.array([
        [pos(p[0, 0]), pos(p[0, 1]), neg(0, 2), -(1 - p[0, 3]) ** 4 * entropy(p[0, 3])],
        [pos(p[1, 0]), neg(1, 1), -(1 - p[1, 2]) ** 4 * entropy(p[1, 2]), neg(1, 3)],
    ]).mean()
    got = em_pl_asl_loss(LOGITS, TARGETS, PSEUDO, clip=clip)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_pseudo_label_losses_warm_up_with_em_and_need_the_pseudo_labels():
    spec = TaskSpec(4, (3,), np.array([[1, -1, -1, -1], [-1, 0, -1, -1]], np.int8),
                    pseudo_labels=PSEUDO.numpy())
    loss = create_loss("em_pl", spec, alpha=0.2, warmup_epochs=2)
    index = torch.tensor([0, 1])
    warm = loss(LOGITS, TARGETS, index, StepInfo(1, 0, 1, 10)).loss
    after = loss(LOGITS, TARGETS, index, StepInfo(2, 0, 1, 10)).loss
    from mlrkit.methods.losses import em_loss

    torch.testing.assert_close(warm, em_loss(LOGITS, TARGETS, 0.2))
    torch.testing.assert_close(after, em_pl_loss(LOGITS, TARGETS, PSEUDO, 0.2, 0.7))
    bare = create_loss("em_pl", TaskSpec(4, (3,), spec.train_targets))
    with pytest.raises(ValueError, match="pseudo_labels section"):
        bare(LOGITS, TARGETS, index, StepInfo(0, 0, 1, 10))


def test_apl_counts_follow_the_formula():
    targets = torch.tensor([[1, -1, -1], [-1, -1, 0], [-1, 1, -1], [-1, -1, -1]], dtype=torch.int8)
    # unknowns per class: 3, 3, 3 -> floor(0.9 * 3 / 2) = 1; with 4 epochs after warm-up 1:
    # floor(0.9 * 3 / 3) = 0
    assert apl_counts(targets, epochs=4, warmup_epochs=2).tolist() == [1, 1, 1]
    assert apl_counts(targets, epochs=4, warmup_epochs=1).tolist() == [0, 0, 0]
    assert apl_counts(targets, 10, 5, neg_proportion=1.0).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="must exceed"):
        apl_counts(targets, 3, 3)


def test_apl_picks_the_lowest_unpicked_unknowns_per_class():
    targets = torch.tensor([[1, -1], [-1, -1], [-1, 0], [-1, -1], [-1, -1]], dtype=torch.int8)
    probs = torch.tensor([[0.01, 0.5], [0.3, 0.2], [0.1, 0.05], [0.2, 0.2], [0.6, 0.9]])
    picked = torch.zeros(5, 2, dtype=torch.bool)
    picked[2, 0] = True  # picked at an earlier step: never again
    new = apl_pick(probs, targets, picked, torch.tensor([2, 2]))
    # class 0: unknown and unpicked rows 1 (.3), 3 (.2), 4 (.6) -> rows 3 and 1 (row 0 is known)
    # class 1: unknown rows 0 (.5), 1 (.2), 3 (.2), 4 (.9); row 2 is a known negative ->
    # rows 1 and 3 (tie at .2: the lower row first, both taken)
    assert new.nonzero().tolist() == [[1, 0], [1, 1], [3, 0], [3, 1]]
    capped = apl_pick(probs, targets, picked, torch.tensor([9, 1]))
    assert capped[:, 0].nonzero().flatten().tolist() == [1, 3, 4]  # all three left
    assert capped[:, 1].nonzero().flatten().tolist() == [1]


def test_em_apl_labels_once_per_epoch_after_the_warm_up_and_trains_on_soft_labels():
    train = np.array([[1, -1], [-1, -1], [-1, 1], [-1, -1]], np.int8)
    loss = create_loss("em_apl", TaskSpec(2, (3,), train), warmup_epochs=1, neg_proportion=1.0,
                       beta=0.5)
    probs = torch.tensor([[0.9, 0.4], [0.2, 0.3], [0.1, 0.8], [0.5, 0.1]])
    calls = []

    def predictions():
        calls.append(1)
        return probs

    loss.on_train_epoch_start(0, 3, predictions)  # warm-up: nothing, no prediction pass
    assert calls == [] and torch.isnan(loss.soft_negatives).all()
    loss.on_train_epoch_start(1, 3, predictions)  # n_c = floor(3 / 2) = 1 per class
    soft = loss.soft_negatives
    assert (~torch.isnan(soft)).nonzero().tolist() == [[2, 0], [3, 1]]
    assert soft[2, 0] == pytest.approx(0.1) and soft[3, 1] == pytest.approx(0.1)
    loss.on_train_epoch_start(1, 3, predictions)  # the same epoch again (resume): no change
    assert len(calls) == 1
    loss.on_train_epoch_start(2, 3, predictions)  # next lowest unpicked: rows 1 (.2) and 1 (.3)
    assert (~torch.isnan(loss.soft_negatives)).nonzero().tolist() == [[1, 0], [1, 1], [2, 0],
                                                                      [3, 1]]
    logits, targets = torch.zeros(2, 2), torch.as_tensor(train[[1, 3]])
    out = loss(logits, targets, torch.tensor([1, 3]), StepInfo(2, 0, 1, 3))
    torch.testing.assert_close(out.loss, em_apl_loss(logits, targets,
                                                     loss.soft_negatives[[1, 3]], 0.2, 0.5))
    # row 1 both picked (p_old .2 / .3), row 3: class 0 plain unknown, class 1 picked (.1)
    q = [0.2, 0.3, None, 0.1]
    bce = [0.5 * (v * nl(0.5) + (1 - v) * nl(0.5)) for v in (0.2, 0.3, 0.1)]
    expected = (sum(bce) - 0.2 * entropy(0.5)) / 4
    assert float(out.loss) == pytest.approx(expected, rel=1e-6) and q[2] is None
    assert out.logs == {"apl_picked": 4.0}
    state = loss.state_dict()
    assert set(state) == {"soft_negatives", "labelled_epoch"} and int(state["labelled_epoch"]) == 2


@pytest.fixture
def small_clip(monkeypatch, tmp_path):
    """A local weights file of the randomly initialised small ViT-B-16 (test_encoders_clip),
    and ``create_clip`` building that architecture from any weights file it is given."""
    real = clip_module.create_clip
    model = real("ViT-B-16", seed=0, **SMALL_VIT_B_16)
    path = tmp_path / "clip.safetensors"
    save_file(model.model.state_dict(), path)
    monkeypatch.setattr(clip_module, "create_clip",
                        lambda name, weights=None, **kw: real("ViT-B-16", weights, seed=1,
                                                              **SMALL_VIT_B_16, **kw))
    return path


def train_with_a_clip_teacher(tmp_path, weights) -> dict:
    """Train a linear head with EM_PL on the CLIP teacher's pseudo-labels into ``tmp_path/run``."""
    make_dataset(tmp_path / "data")
    recipe = {
        "name": "vlpl-clip-teacher",
        "data": {"dataset": "csv", "root": str(tmp_path / "data")},
        "features": {"encoder": "resnet18", "weights": None, "image_size": 32, "seed": 0,
                     "cache": str(tmp_path / "cache"), "num_workers": 0},
        "protocol": {"name": "single_positive", "seed": 0},
        "pseudo_labels": {"teacher": "clip", "weights": str(weights), "tau": 0.03,
                          "theta": 0.34, "templates": ["a photo of {}."]},
        "method": {"name": "linear", "loss": "em_pl"},
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "progress": False, "device": "cpu"},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    return train_run(load_recipe(tmp_path / "r.yaml"), tmp_path / "run")


def test_a_recipe_with_a_clip_teacher_trains_on_its_pseudo_labels(tmp_path, small_clip):
    results = train_with_a_clip_teacher(tmp_path, small_clip)
    assert np.isfinite(results["test_mAP"])
    saved = np.load(tmp_path / "run" / PSEUDO_FILE)
    from mlrkit.data import create_dataset

    data = create_dataset("csv", str(tmp_path / "data"))
    train = data.split_index("train")
    scores = clip_scores([data.image_paths[i] for i in train], list(data.class_names),
                         clip_module.create_clip("ViT-B-16", small_clip).eval(),
                         templates=["a photo of {}."])
    expected = vlpl_pseudo_labels(scores, 0.03, 0.34)
    np.testing.assert_array_equal(saved["labels"], expected.labels)
    np.testing.assert_allclose(saved["q"], expected.q, rtol=1e-5)
    info = json.loads((tmp_path / "run" / "run.json").read_text())["pseudo_labels"]
    quality = pseudo_label_quality(expected.labels, data.labels[train])
    assert info == {"teacher": "clip", "tau": 0.03, "theta": 0.34, "negatives": 0, **quality}


def test_eval_recover_and_predict_of_a_run_with_a_teacher_never_call_it(
    tmp_path, small_clip, monkeypatch, capsys
):
    """The teacher labels the training images once, at train time; using the run needs neither
    it nor (predict) the dataset."""
    trained = train_with_a_clip_teacher(tmp_path, small_clip)
    run = tmp_path / "run"

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was called")

    for module in (pseudo_labels_module, prepare_module):
        monkeypatch.setattr(module, "teacher_scores", no_teacher)
    monkeypatch.setattr(clip_module, "create_clip", no_teacher)
    assert main(["eval", "--checkpoint", str(run)]) == 0
    assert f"{'test_mAP':<22} {100 * trained['test_mAP']:.2f}" in capsys.readouterr().out
    assert main(["recover", "--checkpoint", str(run), "--out", str(tmp_path / "recovered")]) == 0
    photos = tmp_path / "photos"
    shutil.copytree(tmp_path / "data" / "images", photos)
    shutil.rmtree(tmp_path / "data")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run), str(photos / "0.jpg")]) == 0
    assert json.loads(capsys.readouterr().out)[0]["image"] == str(photos / "0.jpg")


def test_a_clip_teacher_without_weights_is_a_recipe_error(tmp_path):
    make_dataset(tmp_path / "data")
    recipe = {"name": "x", "data": {"dataset": "csv", "root": str(tmp_path / "data")},
              "features": {"encoder": "resnet18", "weights": None},
              "protocol": {"name": "single_positive"},
              "pseudo_labels": {"teacher": "clip"}, "method": {"name": "linear", "loss": "em_pl"}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(ValueError, match="pseudo_labels.*needs weights"):
        load_recipe(tmp_path / "r.yaml")


def test_the_dense_conse_teacher_scores_cached_maps_as_dense_conse(monkeypatch):
    from mlrkit.engine.pseudo_labels import teacher_scores
    from mlrkit.engine.recipe_schema import PseudoLabelsSection
    from mlrkit.zero_shot import dense_conse_scores

    section = PseudoLabelsSection(teacher="dense-conse", templates=["a photo of a {}"])
    maps = np.abs(np.random.default_rng(0).normal(size=(3, 1280, 2, 2))).astype(np.float16)
    names = ["cat", "dog", "car"]
    got = teacher_scores(section, names, [Path(f"{i}.jpg") for i in range(3)], maps_lite0=maps)
    want = dense_conse_scores(maps, names, templates=["a photo of a {}"])
    np.testing.assert_allclose(got, want, rtol=0, atol=0)
    assert got.shape == (3, 3) and not np.allclose(got, got[:, :1])  # labels are told apart
