"""Open vocabulary: classes given at forward time, the zero-shot protocol, runs that score classes
they never saw (eval, tag, load), and the training-free ConSE head."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import real_data
from safetensors.torch import load_file
from test_recipe_run import CLASSES, make_dataset

from mlrkit.cli import main
from mlrkit.data import create_dataset
from mlrkit.encoders import label_embeddings
from mlrkit.engine.inference import evaluate_run, load_run, prepare_from_run
from mlrkit.engine.recipe import RecipeError, load_recipe
from mlrkit.engine.run import train_run
from mlrkit.engine.trainer import evaluate_logits
from mlrkit.methods import TaskSpec, create_method
from mlrkit.methods.losses import loss_class
from mlrkit.metrics import zero_shot_metrics
from mlrkit.zero_shot import conse_scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", autouse=True)
def _label_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLRKIT_CACHE", str(tmp_path_factory.mktemp("mlrkit-cache")))
        yield


def zero_shot_recipe(tmp_path: Path, **method) -> Path:
    """A devise run on the coloured squares: blue unseen, GloVe label embeddings."""
    make_dataset(tmp_path / "data")
    recipe = {
        "name": "tiny-zs",
        "data": {"dataset": "csv", "root": str(tmp_path / "data")},
        "features": {"encoder": "resnet18", "weights": None, "image_size": 32, "seed": 0,
                     "cache": str(tmp_path / "cache"), "num_workers": 0},
        "protocol": {"name": "zero_shot", "unseen": ["blue"]},
        "label_embeddings": {"source": "glove"},
        "method": {"name": "devise", **method},
        "train": {"epochs": 3, "batch_size": 8, "lr": 0.01, "progress": False, "device": "cpu"},
    }
    path = tmp_path / "tiny-zs.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_unseen_training_labels_never_reach_a_loss(tmp_path, monkeypatch):
    seen_targets = []

    def recording_rank_loss(logits, targets, margin=1.0):
        seen_targets.append(targets.clone())
        return (logits * 0).sum() + margin * 0

    monkeypatch.setattr(loss_class("rank"), "function", staticmethod(recording_rank_loss))
    results = train_run(load_recipe(zero_shot_recipe(tmp_path)), tmp_path / "run")
    data = create_dataset("csv", str(tmp_path / "data"))
    train = data.labels[data.split_index("train")]
    kept = train[(train[:, :2] == 1).any(axis=1)]  # a seen (red or green) positive
    assert results["dropped_train_images"] == len(train) - len(kept) > 0
    assert all(t.shape[1] == 2 for t in seen_targets)  # the blue column is gone, not unknown
    per_epoch = len(kept)
    batches = torch.cat(seen_targets)
    assert len(batches) >= 3 * per_epoch  # 3 epochs (the last batch is padded to full size)
    rows = {tuple(r) for r in batches.tolist()}
    assert rows <= {tuple(r) for r in kept[:, :2].tolist()}
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["class_names"] == ["red", "green"]
    assert info["zero_shot"]["unseen"] == ["blue"] and info["zero_shot"]["class_names"] == CLASSES


@pytest.fixture
def zero_shot_run(tmp_path) -> Path:
    train_run(load_recipe(zero_shot_recipe(tmp_path)), tmp_path / "run")
    return tmp_path / "run"


def test_zero_shot_eval_scores_all_classes_as_zsl_and_gzsl(zero_shot_run):
    results = json.loads((zero_shot_run / "results.json").read_text())
    run = load_run(zero_shot_run)
    prepared = prepare_from_run(run)
    assert prepared.eval_embeddings.shape == (3, 50)
    run.method.set_classes(prepared.eval_embeddings, CLASSES)
    logits = evaluate_logits(run.method, prepared.sources["test"], 16, torch.device("cpu"))
    unseen = prepared.class_split.unseen  # ZSL: a forward over the unseen classes only
    run.method.set_classes(prepared.eval_embeddings[unseen], [CLASSES[i] for i in unseen])
    zsl_logits = evaluate_logits(run.method, prepared.sources["test"], 16, torch.device("cpu"))
    expected = zero_shot_metrics(logits, prepared.labels["test"], prepared.class_split, "test_",
                                 zsl_logits=zsl_logits)
    assert expected["test_zsl_forward"] == "unseen"
    evaluated = evaluate_run(zero_shot_run)
    assert evaluated.keys() == expected.keys() and set(evaluated) <= set(results)
    for key, value in expected.items():
        assert evaluated[key] == pytest.approx(value), key
        assert results[key] == pytest.approx(value), key
    assert list(results["test_zsl_AP"]) == ["blue"]
    # only the unseen columns count for ZSL; the 3 classes for GZSL
    from mlrkit import metrics
    blue = metrics.average_precision(logits[:, [2]].double(), prepared.labels["test"][:, [2]])
    assert results["test_zsl_mAP"] == pytest.approx(float(blue[0]))
    assert results["test_gzsl_mAP"] == pytest.approx(
        metrics.mean_average_precision(logits.double(), prepared.labels["test"]).value)
    # the validation split chose the epoch on the seen classes only
    assert results["val_classes_averaged"] == 2


def test_checkpoint_holds_no_class_embeddings_and_loads_for_new_names(zero_shot_run):
    weights = load_file(zero_shot_run / "checkpoints" / "best" / "model.safetensors")
    assert not any("class_embeddings" in k for k in weights)
    run = load_run(zero_shot_run)
    names = ["purple", "orange", "grass", "sky"]
    new = torch.as_tensor(label_embeddings(names, "glove"))
    x = torch.randn(5, run.method.spec.feature_dim)
    run.method.eval()
    logits = run.method(x, label_embeddings=new).logits
    projected = F.normalize(run.method.projection(x), dim=-1)
    expected = 10.0 * projected @ F.normalize(new, dim=-1).T
    torch.testing.assert_close(logits, expected)
    run.method.set_classes(new, names)
    torch.testing.assert_close(run.method(x).logits, expected)
    with pytest.raises(ValueError, match=r"\(C, E=50\)"):
        run.method.set_classes(torch.randn(2, 7), ["a", "b"])


def test_tag_with_the_checkpoint_scores_unseen_labels(zero_shot_run, capsys):
    data = create_dataset("csv", str(zero_shot_run.parent / "data"))
    images = [str(p) for p in np.asarray(data.image_paths)[data.split_index("test")][:4]]
    capsys.readouterr()
    code = main(["tag", *images, "--labels", "blue, red", "--checkpoint", str(zero_shot_run),
                 "--top-k", "2", "--format", "json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    run = load_run(zero_shot_run)
    model = run.image_model().eval()
    from mlrkit.engine.batches import ImageBatches

    source = ImageBatches([Path(p) for p in images], np.zeros((4, 2), dtype=np.int8),
                          model.encoder.transform(train=False))
    new = torch.as_tensor(label_embeddings(["blue", "red"], "glove"))
    run.method.set_classes(new, ["blue", "red"])
    logits = evaluate_logits(model, source, 16, torch.device("cpu"))
    expected = run.probabilities(logits)  # the run's calibration (fitted on its seen classes)
    assert run.calibration is not None and np.allclose(
        expected, run.calibration.calibration(logits.double().numpy()))
    for entry, row in zip(printed, expected.tolist(), strict=True):
        order = sorted(range(2), key=lambda c: -row[c])
        assert [e["label"] for e in entry["labels"]] == [["blue", "red"][c] for c in order]
        assert [e["score"] for e in entry["labels"]] == pytest.approx(
            [row[c] for c in order], abs=1e-5)


def test_eval_of_another_dataset_embeds_its_class_names(zero_shot_run, tmp_path):
    other = tmp_path / "other"
    make_dataset(other)
    labels = (other / "labels.csv").read_text().replace("red,green,blue", "blue,crimson,lime")
    (other / "labels.csv").write_text(labels)
    results = evaluate_run(zero_shot_run, dataset="csv", root=str(other), split="test")
    assert results["test_classes_averaged"] == 3 and "test_mAP" in results


def test_zero_shot_recipes_are_validated(tmp_path):
    path = zero_shot_recipe(tmp_path)
    with pytest.raises(RecipeError, match="closed-set and cannot score unseen"):
        load_recipe(path, ["method.name=linear"])
    with pytest.raises(RecipeError, match="exactly one of unseen, fraction, split_file"):
        load_recipe(path, ["protocol.fraction=0.3"])
    recipe = load_recipe(path, ["protocol.unseen=null", "protocol.fraction=0.34",
                                "protocol.seed=3"])
    assert recipe["protocol"]["fraction"] == 0.34
    with pytest.raises(ValueError, match=r"unknown class name\(s\) \['violet'\]"):
        train_run(load_recipe(path, ["protocol.unseen=[violet]"]), tmp_path / "bad")


def test_conse_head_on_cached_features_equals_conse_scores(tmp_path):
    from mlrkit.encoders import create_image_encoder
    from mlrkit.encoders.imagenet import CLASSIFIER

    photos = real_data("coco2014-6k") / "images"
    images = sorted(photos.glob("*.jpg"))[:3]
    encoder = create_image_encoder(CLASSIFIER, weights="imagenet").eval()
    transform = encoder.transform(train=False)
    from PIL import Image

    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])
    with torch.no_grad():
        pooled = encoder(batch).pooled
    names = ["cat", "dog", "aeroplane", "sofa"]
    vectors = torch.as_tensor(label_embeddings(names, "minilm", templates=["a photo of a {}"]))
    spec = TaskSpec(4, (pooled.shape[1],), np.zeros((1, 4), dtype=np.int8), vectors, tuple(names))
    head = create_method("conse", spec, top_t=10)
    assert head.training_free and not list(head.parameters())
    with torch.no_grad():
        ours = head(pooled).logits.numpy()
    reference = conse_scores(images, names, top_t=10)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_devise_distillation_adds_the_l1_to_the_conse_embedding():
    from mlrkit.methods.losses import rank_loss

    names = ["cat", "dog", "sofa"]
    vectors = torch.as_tensor(label_embeddings(names, "minilm", templates=["a photo of a {}"]))
    targets = torch.tensor([[1, 0, 0], [0, 1, -1]], dtype=torch.int8)
    spec = TaskSpec(3, (1280,), np.zeros((2, 3), dtype=np.int8), vectors, tuple(names))
    torch.manual_seed(0)
    head = create_method("devise", spec, distill_weight=5.0,
                         distill_templates=["a photo of a {}"])
    x = torch.randn(2, 1280)
    out = head(x, targets)
    projected = head.projection(x)
    teacher = head.teacher(x)
    rank = rank_loss(10.0 * F.normalize(projected, dim=-1) @ F.normalize(vectors, dim=-1).T,
                     targets)
    expected = rank + 5.0 * (projected - teacher).abs().mean()
    torch.testing.assert_close(out.loss, expected)
    assert out.logs["distill"] == pytest.approx(float((projected - teacher).abs().mean()))
    out.loss.backward()
    assert head.projection[1].weight.grad.abs().sum() > 0
    assert not any(k.startswith("teacher") for k in head.state_dict())  # rebuilt, not saved
    with pytest.raises(ValueError, match="same source"):
        create_method("devise", TaskSpec(3, (1280,), np.zeros((2, 3), dtype=np.int8),
                                         torch.randn(3, 50), tuple(names)), distill_weight=1.0)


def test_eval_cli_prints_zsl_and_gzsl(zero_shot_run, capsys):
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(zero_shot_run)]) == 0
    out = capsys.readouterr().out
    assert "test_zsl_mAP" in out and "test_gzsl_mAP" in out and "test_zsl_AP[blue]" in out


@pytest.mark.parametrize("method", ["sigrl", "devise"])
def test_the_conse_student_starts_as_conse_and_trains_its_own_classifier(method):
    from mlrkit.encoders.imagenet import pooled_probabilities
    from mlrkit.zero_shot import conse_scores

    names = ["cat", "dog", "sofa", "car"]
    vectors = torch.as_tensor(label_embeddings(names, "minilm", templates=["a photo of a {}"]))
    shape = (1280, 2, 2) if method == "sigrl" else (1280,)
    spec = TaskSpec(4, shape, np.zeros((2, 4), dtype=np.int8), vectors, tuple(names))
    options = {"gat_dropout": 0.0} if method == "sigrl" else {}
    head = create_method(method, spec, student="conse", distill_weight=1.0, conse_lr_mult=0.1,
                         distill_templates=["a photo of a {}"], **options).eval()
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0)).abs()
    pooled = x.flatten(2).mean(dim=2) if method == "sigrl" else x
    _, image, teacher_input = head.score_parts(x, vectors)
    # before any step: z_g is ConSE's embedding of the pooled features, the teacher's too ...
    torch.testing.assert_close(image, head.teacher(teacher_input), rtol=0, atol=0)
    want = conse_scores(pooled_probabilities(pooled), names, label_vectors=vectors.numpy())
    got = F.normalize(image, dim=-1) @ F.normalize(vectors, dim=-1).T
    torch.testing.assert_close(got, torch.from_numpy(want), rtol=1e-4, atol=1e-5)  # ... ConSE's
    if method == "sigrl":  # each local token is ConSE at its position (dense ConSE's tokens)
        tokens = head.student(x)[0]
        torch.testing.assert_close(tokens[:, 3], head.teacher(x[:, :, 1, 1]), rtol=1e-5, atol=1e-6)
    targets = torch.tensor([[1, 0, 0, -1], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=torch.int8)
    head.train()
    out = head(x, targets)
    assert out.logs["distill"] == pytest.approx(0.0, abs=1e-6)
    out.loss.backward()
    student = head.conse if method == "sigrl" else head.projection
    assert student.classifier_weight.grad.abs().sum() > 0
    assert "classifier_weight" in dict(student.named_parameters())  # saved with the run
    assert not any(k.startswith("teacher") for k in head.state_dict())  # rebuilt, not saved
    [moved] = [g for g in head.param_groups() if g.get("lr_mult") == 0.1]
    assert {id(p) for p in moved["params"]} == {id(p) for p in student.parameters()}
    assert sum(len(g["params"]) for g in head.param_groups()) == len(list(head.parameters()))


def test_zsl_is_scored_with_a_forward_over_the_unseen_classes_only():
    from mlrkit.data.protocols import ClassSplit
    from mlrkit.engine.batches import FeatureBatches
    from mlrkit.engine.inference import scores_report
    from mlrkit.methods.base import OpenVocabularyMethod

    class SoftmaxOverClasses(OpenVocabularyMethod):  # a score that depends on the class set
        input_kind = "pooled"

        def score(self, inputs, embeddings):
            return (inputs @ embeddings.T).softmax(dim=-1)

    names = ["seen", "u1", "u2"]
    spec = TaskSpec(1, (3,), np.zeros((2, 1), dtype=np.int8), torch.eye(3)[:1], ("seen",))
    head = SoftmaxOverClasses(spec)
    features = np.array([[5.0, 1.0, 0.0], [0.0, 0.5, 0.0]], dtype=np.float32)
    labels = np.array([[1, 1, 0], [0, 0, 1]], dtype=np.int8)
    split = ClassSplit(names, np.array([0]), np.array([1, 2]), {"source": "test"})
    source = FeatureBatches(features, labels)

    def report(zsl_forward):
        return scores_report(head, source, labels, 2, torch.device("cpu"), "", split,
                             torch.eye(3), zsl_forward=zsl_forward)

    # over u1, u2 only photo 0 ranks first for u1 (e^1 / (e^1 + 1) against e^.5 / (e^.5 + 1));
    # among all three classes the seen class's e^5 pushes it below photo 1: AP(u1) 1 vs 0.5
    unseen, sliced = report("unseen"), report("slice")
    assert unseen["zsl_AP"] == {"u1": 1.0, "u2": 1.0} and unseen["zsl_mAP"] == 1.0
    assert sliced["zsl_AP"] == {"u1": 0.5, "u2": 1.0} and sliced["zsl_mAP"] == 0.75
    assert unseen["gzsl_mAP"] == sliced["gzsl_mAP"]  # GZSL: one forward over every class
    assert (unseen["zsl_forward"], sliced["zsl_forward"]) == ("unseen", "slice")


def test_the_dense_conse_method_equals_dense_conse_scores():
    from mlrkit.encoders.imagenet import pooled_probabilities
    from mlrkit.zero_shot import conse_scores, dense_conse_scores

    names = ["cat", "dog", "sofa"]
    vectors = torch.as_tensor(label_embeddings(names, "minilm", templates=["a photo of a {}"]))
    spec = TaskSpec(3, (1280, 3, 2), np.zeros((2, 3), dtype=np.int8), vectors, tuple(names))
    head = create_method("dense-conse", spec, templates=["a photo of a {}"], top_k=2).eval()
    maps = torch.randn(4, 1280, 3, 2, generator=torch.Generator().manual_seed(0)).abs()
    want = dense_conse_scores(maps.numpy(), names, top_k=2, label_vectors=vectors.numpy())
    torch.testing.assert_close(head(maps).logits, torch.from_numpy(want), rtol=1e-4, atol=1e-5)
    one = maps.mean(dim=(2, 3), keepdim=True)  # a 1 x 1 map: ConSE
    conse = conse_scores(pooled_probabilities(one.flatten(1)), names,
                         label_vectors=vectors.numpy())
    torch.testing.assert_close(head(one).logits, torch.from_numpy(conse), rtol=1e-4, atol=1e-5)


def test_the_sigrl_conse_student_with_cosine_matching_and_a_zero_gate_starts_as_dense_conse():
    from mlrkit.zero_shot import dense_conse_scores

    names = ["cat", "dog", "sofa", "car"]
    vectors = torch.as_tensor(label_embeddings(names, "minilm", templates=["a photo of a {}"]))
    spec = TaskSpec(4, (1280, 3, 2), np.zeros((2, 4), dtype=np.int8), vectors, tuple(names))
    options = {"student": "conse", "score_norm": "cosine", "top_k": 2, "gat_dropout": 0.0,
               "distill_templates": ["a photo of a {}"]}
    gated = create_method("sigrl", spec, svfr_gate="zero", **options).eval()
    maps = torch.randn(3, 1280, 3, 2, generator=torch.Generator().manual_seed(0)).abs()
    want = dense_conse_scores(maps.numpy(), names, top_k=2, label_vectors=vectors.numpy())
    # SVFR and GMC are on, but the gate keeps the tokens as they are: dense ConSE, to float error
    torch.testing.assert_close(gated(maps).logits, torch.from_numpy(want), rtol=1e-4, atol=1e-5)
    # a gate of ones is the released reconstruction (z * the summed weights; cosines ignore the
    # constant P / C), with the same weights
    released = create_method("sigrl", spec, svfr_gate="one", **options).eval()
    gated.load_state_dict({**released.state_dict(), "svfr_gate": torch.ones(384)})
    torch.testing.assert_close(gated(maps).logits, released(maps).logits, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        gated.svfr_gate.zero_()
    gated.train()
    targets = torch.tensor([[1, 0, 0, -1], [0, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.int8)
    gated(maps, targets).loss.backward()
    assert gated.svfr_gate.grad.abs().sum() > 0  # the gate learns from zero
    with pytest.raises(ValueError, match="svfr_gate"):
        create_method("sigrl", spec, svfr_gate="half", **options)
