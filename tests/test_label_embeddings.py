"""Class-name embeddings from the installed GloVe and MiniLM packages, a random CLIP model and
files of real CLIP text vectors."""

import importlib
import json

import numpy as np
import pytest
import torch
from conftest import real_data
from safetensors.torch import save_file

from mlrkit.encoders.label_embeddings import label_embeddings, read_embedding_file, split_label
from mlrkit.loaders import CorruptFileError
from mlrkit.prompts import CLIP_PROMPT

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
    assert encoder.calls == [(["potted plant", "cat"], list(CLIP_PROMPT))]
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
        ({"names": ["cat"], "source": "file"}, ValueError),
        ({"names": ["cat"], "path": "x.npy"}, ValueError),
        ({"names": ["cat"], "source": "minilm", "names_path": "x.txt"}, ValueError),
        ({"names": ["cat"], "source": "minilm", "templates": ["a photo of a"]}, ValueError),
        ({"names": ["cat"], "source": "minilm", "templates": "a photo of a {}"}, TypeError),
        ({"names": ["cat"], "source": "file", "path": "x.npy", "templates": ["a {}"]}, ValueError),
    ],
)
def test_invalid_arguments_are_rejected_up_front(kwargs, error):
    with pytest.raises(error):
        label_embeddings(**kwargs)


# ---- MiniLM prompt templates -------------------------------------------------------------------


def test_minilm_template_changes_the_vector_to_the_prompts_embedding():
    bare, prompted = (label_embeddings(["cat", "pottedplant"], "minilm", templates=t)
                      for t in (None, ["a photo of a {}"]))
    assert np.all(np.sum(bare * prompted, axis=1) < 0.99)  # another vector, not a rescaling
    direct = le._minilm_model().encode(["a photo of a cat", "a photo of a potted plant"])
    np.testing.assert_allclose(prompted, direct, atol=1e-5)  # one template: its embedding


def test_minilm_templates_average_to_the_renormalised_mean():
    templates = ["a photo of a {}", "a drawing of a {}"]
    emb = label_embeddings(["dog"], "minilm", templates=templates)
    parts = le._minilm_model().encode(["a photo of a dog", "a drawing of a dog"])
    mean = parts.mean(axis=0)
    np.testing.assert_allclose(emb[0], mean / np.linalg.norm(mean), atol=1e-5)


def test_minilm_without_templates_keeps_its_cache_key():
    # templates=None must key the cache as before, so that existing cached files stay valid
    key = le._cache_key(["cat"], "minilm", "m", (), False)
    assert key == le._cache_key(["cat"], "minilm", "m", le._check_templates(None), False)
    assert key != le._cache_key(["cat"], "minilm", "m", ("a photo of a {}",), False)


# ---- source "file" -----------------------------------------------------------------------------


@pytest.fixture
def clip_text():
    return real_data("clip-text")


def test_file_source_picks_the_real_voc_clip_rows_in_the_requested_order(clip_text):
    path = clip_text / "zegclip_voc12_single.npy"
    stored = np.load(path)
    file_names = (clip_text / "zegclip_voc12_single.names.txt").read_text().split()
    assert stored.dtype == np.float16 and stored.shape == (20, 512) and file_names == VOC
    names = list(reversed(VOC))
    emb = label_embeddings(names, "file", path=path)
    assert emb.shape == (20, 512) and emb.dtype == np.float32
    np.testing.assert_array_equal(emb, stored[::-1].astype(np.float32))
    assert _cosine(emb, names, "cat", "dog") > _cosine(emb, names, "cat", "car") + 0.05
    # case, spaces and '_' are ignored: "Dining_Table" finds "diningtable"
    loose = label_embeddings(["Dining_Table", " TV monitor ", "cat"], "file", path=path)
    np.testing.assert_array_equal(loose, stored[[10, 19, 7]].astype(np.float32))


def test_file_source_reads_the_real_coco_clip_vectors(clip_text):
    path = clip_text / "coco_clip_a+cname.npy"
    emb = label_embeddings(COCO, "file", path=path)
    assert emb.shape == (80, 512) and emb.dtype == np.float32
    np.testing.assert_array_equal(emb, np.load(path).astype(np.float32))  # file order is COCO's
    assert _cosine(emb, COCO, "cat", "dog") > _cosine(emb, COCO, "cat", "car")
    assert np.linalg.norm(emb[0]) > 5  # Detic's vectors are stored unnormalised, and kept so


def test_file_source_names_every_missing_name_and_the_file(clip_text):
    path = clip_text / "coco_clip_a+cname.npy"
    with pytest.raises(ValueError) as err:
        label_embeddings(["cat", "aeroplane", "tvmonitor"], "file", path=path)
    message = str(err.value)
    assert str(path) in message and "coco_clip_a+cname.names.txt" in message
    assert "2 name(s): 'aeroplane' (closest: ['airplane']), 'tvmonitor'" in message
    assert "'cat'" not in message.split("closest")[0]


def test_pt_and_safetensors_files_with_names_give_the_npy_rows(clip_text, tmp_path):
    vectors, names, _ = read_embedding_file(clip_text / "zegclip_voc12_single.npy")
    tensor = torch.from_numpy(vectors)
    torch.save({"embeddings": tensor, "names": names}, tmp_path / "voc.pt")
    save_file({"embeddings": tensor}, tmp_path / "voc.safetensors",
              metadata={"names": json.dumps(names)})
    torch.save(tensor.half(), tmp_path / "bare.pt")  # names from bare.names.txt
    (tmp_path / "bare.names.txt").write_text("\n".join(names) + "\n")
    want = vectors[[11, 7]]
    for file in ("voc.pt", "voc.safetensors", "bare.pt"):
        got = label_embeddings(["dog", "cat"], "file", path=tmp_path / file)
        np.testing.assert_allclose(got, want, atol=1e-3 if file == "bare.pt" else 0)
        assert got.dtype == np.float32


def test_pt_file_pickling_an_object_is_refused_unopened(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (type(marker).touch, (marker,))

    torch.save({"embeddings": torch.ones(2, 3), "names": ["a", "b"], "x": Payload()},
               tmp_path / "evil.pt")
    with pytest.raises(CorruptFileError, match=r"evil\.pt: .*refused: unpickling runs code"):
        label_embeddings(["a"], "file", path=tmp_path / "evil.pt")
    assert not marker.exists()


def test_names_file_must_match_the_rows(tmp_path):
    np.save(tmp_path / "v.npy", np.ones((3, 4), dtype=np.float16))
    with pytest.raises(FileNotFoundError, match=r"names file not found: .*v\.names\.txt"):
        label_embeddings(["a"], "file", path=tmp_path / "v.npy")
    (tmp_path / "v.names.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"v\.names\.txt has 2 names for the 3 rows of .*v\.npy"):
        label_embeddings(["a"], "file", path=tmp_path / "v.npy")
    (tmp_path / "other.txt").write_text("a\nb\nA\n")
    with pytest.raises(ValueError, match=r"names matching several rows: 'a ' -> \['a', 'A'\]"):
        label_embeddings(["a "], "file", path=tmp_path / "v.npy", names_path=tmp_path / "other.txt")
    emb = label_embeddings(["A", "b"], "file", path=tmp_path / "v.npy",
                           names_path=tmp_path / "other.txt")  # an exact match is unambiguous
    assert emb.shape == (2, 4)


@pytest.mark.parametrize(("array", "message"), [
    (np.ones((3,), dtype=np.float32), r"expected a \(K, E\) array"),
    (np.ones((3, 2), dtype=np.int64), r"expected a \(K, E\) float array"),
])
def test_npy_file_must_hold_float_rows(tmp_path, array, message):
    np.save(tmp_path / "v.npy", array)
    (tmp_path / "v.names.txt").write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match=message):
        label_embeddings(["a"], "file", path=tmp_path / "v.npy")
