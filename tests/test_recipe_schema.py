"""Every recipe section is checked against its schema when the recipe is loaded, before any data."""

from pathlib import Path

import pytest
import yaml

from mlrkit.engine.recipe import load_recipe

RECIPE = {  # its data root does not exist: loading must not read data
    "name": "r",
    "data": {"dataset": "csv", "root": "no/such/folder"},
    "features": {"encoder": "resnet18", "spatial": True},
    "label_embeddings": {"source": "glove"},
    "protocol": {"name": "partial", "known": 0.3},
    "method": {"name": "sarb", "mixup_epoch": 2},
    "train": {"lr": 0.01, "weight_decay": 0, "epochs": 3},
}


def load(tmp_path: Path, overrides: list[str], recipe: dict = RECIPE) -> dict:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return load_recipe(path, overrides)


@pytest.mark.parametrize(("override", "unknown", "valid"), [
    ("features.spatail=true", "features.spatail", "spatial"),
    ("train.lrr=0.1", "train.lrr", "weight_decay"),
    ("label_embeddings.allow_unknwon=true", "label_embeddings.allow_unknwon", "allow_unknown"),
    ("method.mixup_epok=2", "method.mixup_epok", "mixup_epoch"),
    ("method.loss_options.gama_neg=2", "method.loss_options.gama_neg", "gamma_neg"),
    ("data.options.allow_outside_rot=true", "data.options.allow_outside_rot",
     "allow_outside_root"),
    ("data.holdout.sead=1", "data.holdout.sead", "from"),
])
def test_a_typo_in_any_section_is_named_with_the_valid_keys(tmp_path, override, unknown, valid):
    extra = ["data.holdout.size=5"] if override.startswith("data.holdout") else []
    extra += ["method.loss=asl"] if "loss_options" in override else []
    with pytest.raises(KeyError, match=rf"r\.yaml: unknown key\(s\) \['{unknown}'\]; valid keys "
                                       rf"of .*'{valid}'") as err:
        load(tmp_path, [*extra, override])
    assert not str(err.value).startswith("'")  # one clean line, not a quoted KeyError


def test_end_to_end_encoder_section_is_checked_too(tmp_path):
    recipe = {**RECIPE, "features": None, "encoder": {"name": "resnet18", "lr_mul": 0.1}}
    with pytest.raises(KeyError, match=r"\['encoder\.lr_mul'\].*'lr_mult'"):
        load(tmp_path, [], recipe)


@pytest.mark.parametrize(("override", "message"), [
    ("train.lr=fast", r"train\.lr: Input should be a valid number.*\(got 'fast'\)"),
    ("train.epochs=2.5", r"train\.epochs: Input should be a valid integer"),
    ("train.optimizer=adm", r"train\.optimizer='adm'; choose one of"),
    ("features.batch_size=0", r"features\.batch_size: Input should be greater than or equal to 1"),
    ("protocol.known=lots", r"protocol\.known: Input should be a valid number"),
    ("protocol.mode=cole", r"protocol\.mode: Input should be 'bernoulli' or 'hcp'"),
    ("label_embeddings.source=glov", r"label_embeddings\.source: Input should be 'glove'"),
    ("method.mixup_epoch=soon", r"method\.mixup_epoch: Input should be a valid integer"),
    ("method.name=sabr", r"method\.name: unknown method 'sabr'; available: .*sarb"),
    ("method.loss=partial_bc", r"method\.loss: unknown loss 'partial_bc'; available: .*bce"),
    ("method.loss=epr", r"method\.loss_options\.expected_positives is required"),
    ("data.train_split=[a, b]", r"data\.train_split: Input should be a valid string"),
    ("data.options.check_images=maybe", r"data\.options\.check_images: .* valid boolean"),
    ("data.dataset=cvs", r"data\.dataset: unknown dataset 'cvs'"),
    ("name=[x]", r"r\.yaml: name: Input should be a valid string"),
])
def test_a_value_of_the_wrong_type_is_named(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        load(tmp_path, [override])


def test_numbers_and_booleans_left_as_text_are_read_and_nothing_else_changes(tmp_path):
    recipe = load(tmp_path, ["train.lr='1e-3'", "features.spatial='false'",
                             "method.loss_options.alpha='0.2'", "method.loss=em"])
    assert recipe["train"] == {"lr": 0.001, "weight_decay": 0, "epochs": 3}  # no defaults added
    assert isinstance(recipe["train"]["weight_decay"], int)  # well-typed values stay as written
    assert recipe["features"] == {"encoder": "resnet18", "spatial": False}
    assert recipe["method"] == {"name": "sarb", "mixup_epoch": 2, "loss": "em",
                                "loss_options": {"alpha": 0.2}}
    assert recipe["data"]["options"] == {}


def test_onecycle_and_ema_keys_are_accepted_and_add_nothing_when_unused(tmp_path):
    recipe = load(tmp_path, ["train.schedule=onecycle", "train.pct_start='0.2'",
                             "train.ema_decay='0.9997'"])
    assert recipe["train"] == {"lr": 0.01, "weight_decay": 0, "epochs": 3, "schedule": "onecycle",
                               "pct_start": 0.2, "ema_decay": 0.9997}
    assert load(tmp_path, [])["train"] == RECIPE["train"]
    assert load(tmp_path, ["train.ema_decay=null"])["train"]["ema_decay"] is None
    with pytest.raises(ValueError, match=r"train\.ema_decay: Input should be a valid number"):
        load(tmp_path, ["train.ema_decay=slow"])
    with pytest.raises(ValueError, match=r"train\.ema_decay=1\.5 must be in \(0, 1\)"):
        load(tmp_path, ["train.ema_decay=1.5"])


def test_label_embeddings_from_a_file_are_accepted_and_read_by_prepare(tmp_path):
    from conftest import real_data

    from mlrkit.engine.sources import section_label_embeddings

    path = str(real_data("clip-text") / "zegclip_voc12_single.npy")
    recipe = load(tmp_path, ["label_embeddings.source=file", f"label_embeddings.path={path}"])
    assert recipe["label_embeddings"] == {"source": "file", "path": path}  # nothing added
    vectors = section_label_embeddings(recipe["label_embeddings"], ["dog", "cat"])
    assert tuple(vectors.shape) == (2, 512) and vectors.dtype.is_floating_point
    prompted = load(tmp_path, ["label_embeddings.source=minilm",
                               "label_embeddings.templates=['a photo of a {}']"])
    assert prompted["label_embeddings"]["templates"] == ["a photo of a {}"]


@pytest.mark.parametrize(("overrides", "message"), [
    (["label_embeddings.source=file"],
     r"r\.yaml: label_embeddings\.path is required with source: file"),
    (["label_embeddings.source=file", "label_embeddings.path=no/such.npy"],
     r"label_embeddings\.path: file not found: no/such\.npy"),
    (["label_embeddings.path=v.npy"],
     r"label_embeddings\.path only applies to source file, not glove"),
    (["label_embeddings.templates=['a {}']"],
     r"label_embeddings\.templates only applies to source clip or minilm, not glove"),
    (["label_embeddings.source=minilm", "label_embeddings.allow_unknown=true"],
     r"label_embeddings\.allow_unknown only applies to source glove, not minilm"),
])
def test_label_embedding_options_of_another_source_are_refused_at_load(tmp_path, overrides,
                                                                       message):
    with pytest.raises(ValueError, match=message):
        load(tmp_path, overrides)
