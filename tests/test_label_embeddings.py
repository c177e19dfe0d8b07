"""Class-name embeddings from the installed GloVe and MiniLM packages and a random CLIP model."""

import importlib

import numpy as np
import pytest

from mlrkit.encoders.label_embeddings import label_embeddings, split_label

# the module itself: a package that re-exports the function shadows the submodule attribute
le = importlib.import_module("mlrkit.encoders.label_embeddings")

VOC = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
]  # fmt: skip
COCO = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test starts with an empty memo and a default cache folder under its tmp_path."""
    monkeypatch.setattr(le, "_MEMO", {})
    monkeypatch.setenv("MLRKIT_CACHE", str(tmp_path / "mlrkit-cache"))


def _cosine(emb: np.ndarray, names: list[str], a: str, b: str) -> float:
    x, y = emb[names.index(a)], emb[names.index(b)]
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


def test_glove_index_rows_follow_the_matrix_order():
    vocab = le._glove_vocab()
    assert len(vocab) == le._glove_matrix().shape[0] == 400_000
    # rows checked against pyarrow's reading of the same file
    assert (vocab["the"], vocab[","], vocab["motorbike"], vocab["sandberger"]) == (
        0,
        1,
        25032,
        399_999,
    )


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("diningtable", ("dining", "table")),
        ("pottedplant", ("potted", "plant")),
        ("tvmonitor", ("tv", "monitor")),
        ("motorbike", ("motorbike",)),
        ("traffic light", ("traffic", "light")),
        ("Traffic_Light", ("traffic", "light")),
        ("hair-drier", ("hair", "drier")),
        ("t-shirt", ("t-shirt",)),
        ("firehydrant", ("fire", "hydrant")),
        ("teddybear", ("teddy", "bear")),
        ("qwxzv", ("qwxzv",)),
    ],
)
def test_split_label_separates_and_segments_words(name, words):
    assert split_label(name) == words


@pytest.mark.parametrize(("source", "dim"), [("glove", 50), ("minilm", 384)])
@pytest.mark.parametrize("names", [VOC, COCO], ids=["voc", "coco"])
def test_voc_and_coco_names_embed_offline(names, source, dim):
    emb = label_embeddings(names, source)
    assert emb.shape == (len(names), dim) and emb.dtype == np.float32
    assert np.isfinite(emb).all() and (np.abs(emb).sum(axis=1) > 0).all()
    assert _cosine(emb, names, "cat", "dog") > _cosine(emb, names, "cat", "car")
    if source == "minilm":
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_run_together_name_is_the_mean_of_its_glove_words():
    emb = label_embeddings(["diningtable", "dining", "table", "dining table"])
    np.testing.assert_allclose(emb[0], (emb[1] + emb[2]) / 2, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(emb[0], emb[3])


def test_unknown_glove_word_raises_naming_class_and_word():
    with pytest.raises(ValueError, match=r"'big qwxzv': 'qwxzv'"):
        label_embeddings(["cat", "big qwxzv"])


def test_allow_unknown_averages_known_words_and_zeroes_the_rest():
    with pytest.warns(UserWarning, match="qwxzv"):
        emb = label_embeddings(["qwxzv", "dog qwxzv", "dog"], allow_unknown=True)
    np.testing.assert_array_equal(emb[0], 0.0)
    np.testing.assert_array_equal(emb[1], emb[2])


def test_disk_cache_is_read_back_and_keyed_by_class_list(tmp_path):
    first = label_embeddings(["cat", "dog"], cache_dir=tmp_path)
    (path,) = tmp_path.glob("glove-*.npy")
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), first)
    sentinel = np.full_like(first, 7.0)
    np.save(path, sentinel)
    le._MEMO.clear()
    np.testing.assert_array_equal(label_embeddings(["Cat", "dog"], cache_dir=tmp_path), sentinel)
    label_embeddings(["dog", "cat"], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("glove-*.npy"))) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_default_cache_folder_follows_mlrkit_cache(tmp_path):
    label_embeddings(["cat"])
    assert len(list((tmp_path / "mlrkit-cache" / "label_embeddings").glob("glove-*.npy"))) == 1


def test_memo_hands_out_copies():
    emb = label_embeddings(["cat", "dog"])
    emb[:] = 0.0
    assert np.abs(label_embeddings(["cat", "dog"])).sum() > 0


def test_clip_text_of_random_open_clip_model_is_unit_norm(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    model = open_clip.create_model("ViT-S-32", pretrained=None).eval()
    templates = ["a photo of a {}.", "a blurry photo of a {}."]
    emb = label_embeddings(VOC[:5], "clip", clip_model=model, templates=templates)
    assert emb.shape == (5, model.text_projection.shape[1]) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert not list(tmp_path.rglob("*.npy"))  # no model_id: nothing cached


def test_clip_accepts_an_encoder_with_text_embeddings(tmp_path):
    class Encoder:
        model_id = "fake-clip"

        def __init__(self):
            self.calls = []

        def text_embeddings(self, phrases, templates):
            self.calls.append((list(phrases), list(templates)))
            return np.arange(len(phrases) * 3, dtype=np.float64).reshape(len(phrases), 3) + 1

    encoder = Encoder()
    emb = label_embeddings(["pottedplant", "cat"], "clip", clip_model=encoder, cache_dir=tmp_path)
    assert encoder.calls == [(["potted plant", "cat"], list(le.DEFAULT_TEMPLATES))]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    assert len(list(tmp_path.glob("clip-*.npy"))) == 1


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"names": "cat"}, TypeError),
        ({"names": []}, ValueError),
        ({"names": ["cat", "--"]}, ValueError),
        ({"names": ["cat"], "source": "word2vec"}, ValueError),
        ({"names": ["cat"], "templates": ["a {}"]}, ValueError),
        ({"names": ["cat"], "source": "minilm", "allow_unknown": True}, ValueError),
        ({"names": ["cat"], "source": "clip"}, ValueError),
        ({"names": ["cat"], "source": "clip", "clip_model": object()}, TypeError),
    ],
)
def test_invalid_arguments_are_rejected_up_front(kwargs, error):
    with pytest.raises(error):
        label_embeddings(**kwargs)
