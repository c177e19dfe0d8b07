"""SigRL's parts on hand-built tensors: GATv2 attention, the channel-wise softmax over positions,
text mixing, SVFR, top-k local scoring, chunked = direct, and the training loss."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlrkit.methods import TaskSpec, create_method
from mlrkit.methods.losses import rank_loss
from mlrkit.methods.sigrl import GATv2Layer, decouple, reconstruction_weights, text_mixing

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def head(classes: int = 5, dim: int = 6, **options):
    torch.manual_seed(0)
    spec = TaskSpec(classes, (8, 2, 3), np.zeros((4, classes), dtype=np.int8),
                    torch.randn(classes, dim), tuple(f"c{i}" for i in range(classes)))
    options = {"distill_weight": 0.0, "gat_dropout": 0.0, "gat_hidden": 4, "gat_heads": 2,
               "top_k": 2, **options}
    return create_method("sigrl", spec, **options)


def test_gatv2_attention_is_a_softmax_over_source_nodes_of_a_leaky_relu_score():
    layer = GATv2Layer(2, 2, heads=1, concat=False, dropout=0.0)
    with torch.no_grad():
        layer.source.weight.copy_(torch.eye(2))
        layer.attention.weight.copy_(torch.tensor([[1.0, -2.0]]))
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 2.0]])

    def lrelu(v):
        return v if v > 0 else 0.2 * v

    expected = torch.zeros(3, 2)
    for i in range(3):
        e = [lrelu(h[i, 0] + h[j, 0]) * 1.0 + lrelu(h[i, 1] + h[j, 1]) * -2.0 for j in range(3)]
        w = torch.softmax(torch.tensor(e), dim=0)
        expected[i] = sum(w[j] * h[j] for j in range(3))
    torch.testing.assert_close(layer(h), expected)
    torch.testing.assert_close(layer(h, node_chunk=1), expected)  # chunks of target nodes
    concat = GATv2Layer(2, 4, heads=2, concat=True, dropout=0.0)
    assert concat(h).shape == (3, 4)


def test_decoupling_softmax_runs_over_positions_for_each_channel():
    torch.manual_seed(0)
    tokens, text = torch.randn(2, 4, 3), torch.randn(5, 3)
    fc = nn.Linear(3, 3)
    out = decouple(tokens, text, fc, class_chunk=2)
    expected = torch.zeros(2, 5, 3)
    for b in range(2):
        for c in range(5):
            u = fc(torch.tanh(tokens[b] * text[c]))  # (P, E)
            a = torch.softmax(u, dim=0)  # over the 4 positions, per channel
            assert torch.allclose(a.sum(dim=0), torch.ones(3))
            expected[b, c] = (a * tokens[b]).sum(dim=0)
    torch.testing.assert_close(out, expected)


def test_reconstruction_weights_sum_the_class_softmaxes():
    torch.manual_seed(1)
    tokens, keys = torch.randn(2, 4, 3), torch.randn(2, 5, 3)
    fc = nn.Linear(3, 3)
    expected = sum(torch.softmax(fc(torch.tanh(tokens * keys[:, c : c + 1])), dim=1)
                   for c in range(5))
    torch.testing.assert_close(reconstruction_weights(tokens, keys, fc, class_chunk=3), expected)
    # each class's weights sum to 1 over the positions, so the total is C per channel
    torch.testing.assert_close(expected.sum(dim=1), torch.full((2, 3), 5.0))


def test_text_mixing_formula_and_the_released_batch_norm():
    torch.manual_seed(2)
    s, t = torch.randn(2, 4, 3), torch.randn(4, 3)
    m = torch.relu(s[0].T @ t) / (s[0].norm() * t.norm())
    expected0 = s[0] @ F.normalize(m, dim=-1)
    torch.testing.assert_close(text_mixing(s, t, "image")[0], expected0)
    alone = text_mixing(s[:1], t, "image")[0]
    torch.testing.assert_close(alone, expected0)  # per image: the other image does not matter
    batch = text_mixing(s, t, "batch")[0]
    m_batch = torch.relu(s[0].T @ t) / (s.norm() * t.norm())
    torch.testing.assert_close(batch, s[0] @ F.normalize(m_batch, dim=-1))
    # row normalisation removes a common scale: the batch norm changes nothing here
    torch.testing.assert_close(batch, expected0)
    with pytest.raises(ValueError, match="mixing_norm"):
        text_mixing(s, t, "batches")


def test_local_score_is_the_mean_of_the_top_k_positions_normalised_over_classes():
    model = head(use_svfr=False, branches="local", top_k=2).eval()
    x = torch.randn(3, 8, 2, 3)
    tokens = model.projection(x.flatten(2).transpose(1, 2))  # (B, 6, E)
    similarity = tokens @ model.class_embeddings.T  # (B, 6, C)
    top2 = similarity.sort(dim=1, descending=True).values[:, :2].mean(dim=1)
    torch.testing.assert_close(model(x).logits, F.normalize(top2, dim=-1))
    both = head(use_svfr=False, branches="both", top_k=2).eval()
    pooled = both.projection(x.flatten(2).mean(dim=2))
    expected = (F.normalize(top2, dim=-1) + F.normalize(pooled @ both.class_embeddings.T, dim=-1)) / 2
    torch.testing.assert_close(both(x).logits, expected)


@pytest.mark.parametrize("class_chunk", [1, 2, 5, 7])
def test_chunked_equals_direct_values_and_gradients(class_chunk):
    model = head(class_chunk=class_chunk)
    model.train()
    x = torch.randn(3, 8, 2, 3)
    targets = torch.tensor([[1, 0, -1, 0, 1], [0, 1, 0, -1, 0], [1, 1, 0, 0, -1]],
                           dtype=torch.int8)

    def run(direct):
        model.zero_grad(set_to_none=True)
        out = model(x, targets, direct=direct)
        out.loss.backward()
        return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                     if p.grad is not None}

    logits, grads = run(False)
    logits_d, grads_d = run(True)
    torch.testing.assert_close(logits, logits_d, atol=1e-5, rtol=1e-5)
    assert grads.keys() == grads_d.keys() and "gmc.layer1.source.weight" in grads
    for name in grads:
        torch.testing.assert_close(grads[name], grads_d[name], atol=1e-5, rtol=1e-5, msg=name)


def test_training_loss_is_rank_plus_distillation_and_ablations_build():
    model = head()
    model.eval()
    x = torch.randn(2, 8, 2, 3)
    targets = torch.tensor([[1, 0, 0, -1, 0], [0, 0, 1, 0, 0]], dtype=torch.int8)
    out = model(x, targets)
    torch.testing.assert_close(out.loss, rank_loss(out.logits, targets))
    for options in ({"use_gmc": False}, {"use_svfr": False}, {"branches": "global"}):
        ablated = head(**options)
        assert ablated(x).logits.shape == (2, 5)
    assert head(use_gmc=False).gmc is None and not hasattr(head(use_svfr=False), "key")
    with pytest.raises(ValueError, match="branches"):
        head(branches="middle")
    # scores are cosine-like: two unit vectors averaged
    assert float(out.logits.detach().norm(dim=1).max()) <= 1 + 1e-6
    assert math.isfinite(float(out.loss))


def test_a_sigrl_run_tags_unseen_labels_through_its_checkpoint(tmp_path, capsys):
    import json
    from pathlib import Path

    import yaml
    from test_recipe_run import make_dataset

    from mlrkit.cli import main
    from mlrkit.data import create_dataset
    from mlrkit.encoders import label_embeddings
    from mlrkit.engine.batches import ImageBatches
    from mlrkit.engine.inference import load_run
    from mlrkit.engine.recipe import load_recipe
    from mlrkit.engine.run import train_run
    from mlrkit.engine.trainer import evaluate_logits

    make_dataset(tmp_path / "data")
    recipe = {
        "name": "tiny-sigrl",
        "data": {"dataset": "csv", "root": str(tmp_path / "data")},
        "features": {"encoder": "resnet18", "weights": None, "image_size": 64, "seed": 0,
                     "cache": str(tmp_path / "cache"), "num_workers": 0, "spatial": True},
        "protocol": {"name": "zero_shot", "unseen": ["blue"]},
        "label_embeddings": {"source": "glove"},
        "method": {"name": "sigrl", "distill_weight": 0.0, "top_k": 2, "gat_hidden": 8},
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "progress": False, "device": "cpu",
                  "no_decay_1d": True, "warmup_epochs": 1},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    results = train_run(load_recipe(tmp_path / "r.yaml"), tmp_path / "run")
    assert {"test_zsl_mAP", "test_gzsl_mAP", "test_zsl_AP"} <= set(results)
    data = create_dataset("csv", str(tmp_path / "data"))
    images = [str(p) for p in np.asarray(data.image_paths)[data.split_index("test")][:3]]
    labels = ["blue", "navy", "sky"]
    capsys.readouterr()
    assert main(["tag", *images, "--labels", ", ".join(labels), "--checkpoint",
                 str(tmp_path / "run"), "--top-k", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    run = load_run(tmp_path / "run")
    model = run.image_model().eval()
    source = ImageBatches([Path(p) for p in images], np.zeros((3, 3), dtype=np.int8),
                          model.encoder.transform(train=False))
    run.method.set_classes(torch.as_tensor(label_embeddings(labels, "glove")), labels)
    expected = evaluate_logits(model, source, 8, torch.device("cpu"))
    for entry, row in zip(printed, expected.tolist(), strict=True):
        order = sorted(range(3), key=lambda c: -row[c])
        assert [e["label"] for e in entry["labels"]] == [labels[c] for c in order]


def test_a_sigrl_conse_run_ranks_unseen_coco_names_on_held_out_photos(tmp_path, capsys):
    import json

    import yaml
    from conftest import real_data

    from mlrkit.cli import main
    from mlrkit.data import create_dataset
    from mlrkit.engine.recipe import load_recipe
    from mlrkit.engine.run import train_run
    from mlrkit.metrics import mean_average_precision

    root = real_data("coco-mini")
    unseen = ["airplane", "train", "cat", "bear", "toilet"]  # of COCO's 15 unseen classes
    recipe = {
        "name": "coco-mini-sigrl-conse",
        "data": {"dataset": "coco", "root": str(root), "val_split": None, "test_split": "val"},
        "features": {"encoder": "tf_efficientnet_lite0", "weights": "imagenet", "spatial": True,
                     "image_size": 224, "cache": str(tmp_path / "cache"), "num_workers": 0},
        "protocol": {"name": "zero_shot", "unseen": unseen},
        "label_embeddings": {"source": "minilm", "templates": ["a photo of a {}"]},
        # without SVFR (75 classes x 49 positions x 384 channels: 2 s a batch on one thread),
        # which the projection student's tag test above carries through a checkpoint
        "method": {"name": "sigrl", "student": "conse", "score_norm": "cosine",
                   "use_svfr": False, "conse_lr_mult": 0.1, "top_k": 4,
                   "distill_templates": ["a photo of a {}"]},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.001, "progress": False,
                  "device": "cpu", "no_decay_1d": True},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    results = train_run(load_recipe(tmp_path / "r.yaml"), tmp_path / "run")
    data = create_dataset("coco", str(root))
    held_out = data.split_index("val")
    columns = [list(data.class_names).index(name) for name in unseen]
    labels = data.labels[held_out][:, columns]
    alone = np.flatnonzero(labels.sum(axis=1) == 1)  # photos with exactly one of the names
    images = [str(p) for p in np.asarray(data.image_paths)[held_out][alone]]
    capsys.readouterr()
    assert main(["tag", *images, "--labels", ", ".join(unseen), "--checkpoint",
                 str(tmp_path / "run"), "--top-k", "5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    firsts = [entry["labels"][0]["label"] for entry in printed]
    truth = [unseen[int(np.argmax(row))] for row in labels[alone]]
    assert len(firsts) == len(alone) >= 8
    scores = np.array([[{e["label"]: e["score"] for e in entry["labels"]}[n] for n in unseen]
                       for entry in printed])
    # ranked by the printed scores, each name's photos come first (1.0 would be every one);
    # 8 of the 10 photos have their own class at the top (two cats: "bear", "airplane")
    assert mean_average_precision(scores, labels[alone]).value >= 0.9
    assert sum(f == t for f, t in zip(firsts, truth, strict=True)) >= 8
    assert results["test_zsl_mAP"] >= 0.8  # every held-out photo, ZSL: the unseen names only
