"""From a recipe to a finished run folder: data → protocol mask → features or images → method → fit.

A run folder holds everything needed to repeat, evaluate or use the run::

    config.yaml      the resolved recipe
    mask.npz         the protocol's known-label mask of the training split (ProtocolMask)
    metrics.jsonl    one line per epoch
    checkpoints/     best/ and the last epoch (see engine.checkpoint)
    results.json     best epoch, validation and test metrics
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mlrkit.atomic import atomic_write
from mlrkit.data import MultiLabelData, create_dataset
from mlrkit.data.feature_cache import extract_features, load_features
from mlrkit.data.protocols import ProtocolMask, partial_labels, single_positive
from mlrkit.engine.batches import FeatureBatches, ImageBatches
from mlrkit.engine.checkpoint import load_checkpoint
from mlrkit.engine.distributed import barrier, current_info, init_distributed, resolve_device
from mlrkit.engine.recipe import load_recipe, save_recipe
from mlrkit.engine.trainer import TrainConfig, evaluate_logits, fit, score_report
from mlrkit.methods import Method, MethodOutput, StepInfo, TaskSpec, create_method, method_class


class EncoderHead(Method):
    """An image encoder followed by a method: end-to-end training, and prediction from images.

    ``inputs`` are images ``(B, 3, H, W)``; the method receives the encoder's pooled ``(B, D)`` or
    spatial ``(B, D, h, w)`` features, as its ``input_kind`` asks. ``trainable`` lists the
    parameter-name prefixes of the encoder that are fine-tuned (``None``: all of it; ``[]``: none,
    e.g. SARB's ``["model.layer4"]``); frozen encoder modules stay in eval mode, so their
    BatchNorm statistics do not move.
    """

    def __init__(self, encoder: nn.Module, method: Method, lr_mult: float = 1.0,
                 trainable: list[str] | None = None) -> None:
        super().__init__(method.spec)
        self.encoder, self.method, self.lr_mult = encoder, method, lr_mult
        self.trainable = trainable
        for name, param in self.encoder.named_parameters():
            param.requires_grad_(self._is_trainable(name))

    def _is_trainable(self, name: str) -> bool:
        """Whether parameter or module ``name`` lies inside one of the trainable prefixes."""
        return self.trainable is None or any(
            name == p or name.startswith(p + ".") for p in self.trainable
        )

    def encode(self, images: Tensor) -> Tensor:
        out = self.encoder(images)
        return out.spatial if self.method.input_kind == "spatial" else out.pooled

    def forward(self, inputs: Tensor, targets: Tensor | None = None, index: Tensor | None = None,
                step: StepInfo | None = None) -> MethodOutput:
        return self.method(self.encode(inputs), targets, index, step)

    def train(self, mode: bool = True) -> EncoderHead:
        super().train(mode)
        for name, module in self.encoder.named_modules():
            if not self._is_trainable(name):
                module.training = False  # this module only: its trainable children keep mode
        return self

    def param_groups(self) -> list[dict]:
        groups = self.method.param_groups()
        encoder_params = [p for p in self.encoder.parameters() if p.requires_grad]
        if encoder_params:
            groups.append({"params": encoder_params, "lr_mult": self.lr_mult})
        return groups

    def on_train_epoch_start(self, epoch, train_batches) -> None:
        def encoded():
            with torch.no_grad():
                for images, targets, index in train_batches():
                    yield self.encode(images), targets, index

        self.method.on_train_epoch_start(epoch, encoded)


@dataclass
class PreparedRun:
    """Everything built from a recipe, before training."""

    recipe: dict
    data: MultiLabelData
    mask: ProtocolMask | None
    method: Method
    sources: dict[str, torch.utils.data.Dataset]
    labels: dict[str, np.ndarray]


def draw_mask(protocol: dict, train_labels: np.ndarray) -> ProtocolMask | None:
    """The recipe's protocol applied to the training labels (or loaded from ``mask_file``)."""
    if protocol.get("mask_file"):
        return ProtocolMask.load(protocol["mask_file"])
    name = protocol["name"]
    if name == "partial":
        return partial_labels(train_labels, protocol["known"], seed=protocol.get("seed", 0),
                              mode=protocol.get("mode", "bernoulli"))
    if name == "single_positive":
        return single_positive(train_labels, seed=protocol.get("seed", 1200),
                               mode=protocol.get("mode", "uniform"))
    return None


def _create_encoder(section: dict) -> nn.Module:
    from mlrkit.encoders import create_image_encoder

    return create_image_encoder(section["name"], weights=section.get("weights"),
                                image_size=section.get("image_size"),
                                seed=section.get("seed", 0))


def _label_embeddings(section: dict | None, class_names: list[str]) -> Tensor | None:
    if not section:
        return None
    from mlrkit.encoders import label_embeddings

    options = {k: v for k, v in section.items() if k != "source"}
    vectors = label_embeddings(class_names, source=section["source"], **options)
    return torch.as_tensor(np.asarray(vectors), dtype=torch.float32)


def prepare(recipe: dict) -> PreparedRun:
    """Read the data, draw the mask, get features (cache) or image sources, build the method."""
    cfg_data = recipe["data"]
    data = create_dataset(cfg_data["dataset"], cfg_data["root"], **cfg_data["options"])
    index = {
        s: None if cfg_data[f"{s}_split"] is None else data.split_index(cfg_data[f"{s}_split"])
        for s in ("train", "val", "test")
    }
    labels = {s: data.labels[i] for s, i in index.items() if i is not None}
    mask = draw_mask(recipe["protocol"], labels["train"])
    observed = labels["train"] if mask is None else mask.observed(labels["train"])
    kind = method_class(recipe["method"]["name"]).input_kind

    if recipe["features"] is not None:
        feat = recipe["features"]
        encoder = _create_encoder({"name": feat["encoder"], **feat})
        cache_dir = feat.get("cache") or f"runs/cache/{data.name}-{feat['encoder']}"
        info = current_info()
        if info.is_main:  # under torchrun, rank 0 extracts and the others wait, then all read
            extract_features(data, encoder, cache_dir, spatial=bool(feat.get("spatial")),
                             batch_size=feat.get("batch_size", 32),
                             num_workers=feat.get("num_workers", 2))
        barrier(info)
        cache = load_features(cache_dir, data=data, encoder=encoder)
        array = cache.spatial if kind == "spatial" else cache.pooled
        if array is None:
            raise ValueError(f"method {recipe['method']['name']} needs spatial features; set "
                             f"features.spatial=true")
        sources = {s: FeatureBatches(array[i], observed if s == "train" else labels[s])
                   for s, i in index.items() if i is not None}
        feature_shape = tuple(array.shape[1:])
    else:
        enc = recipe["encoder"]
        encoder = _create_encoder(enc)
        paths = np.asarray(data.image_paths, dtype=object)
        sources = {
            s: ImageBatches(paths[i], observed if s == "train" else labels[s],
                            encoder.transform(train=(s == "train")))
            for s, i in index.items() if i is not None
        }
        size = encoder.input_size
        with torch.no_grad():
            probe = encoder.eval()(torch.zeros(1, *size))
        feature_shape = tuple((probe.spatial if kind == "spatial" else probe.pooled).shape[1:])

    spec = TaskSpec(
        num_classes=data.num_classes,
        feature_shape=feature_shape,
        train_targets=observed,
        label_embeddings=_label_embeddings(recipe["label_embeddings"], data.class_names),
        class_names=tuple(data.class_names),
    )
    torch.manual_seed(recipe["train"].get("seed", 0))
    hparams = {k: v for k, v in recipe["method"].items() if k != "name"}
    method = create_method(recipe["method"]["name"], spec, **hparams)
    if recipe["encoder"] is not None:
        method = EncoderHead(encoder, method, lr_mult=recipe["encoder"].get("lr_mult", 1.0),
                             trainable=recipe["encoder"].get("trainable"))
    return PreparedRun(recipe, data, mask, method, sources, labels)


def train_run(recipe: dict, run_dir: str | Path, *, resume: bool = False) -> dict:
    """Train the recipe into ``run_dir`` and return the results (also written to results.json)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cfg = TrainConfig(**recipe["train"])
    info = init_distributed(resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0"))))
    prepared = prepare(recipe)
    if info.is_main:
        save_recipe(recipe, run_dir / "config.yaml")
        if prepared.mask is not None:
            prepared.mask.save(run_dir / "mask.npz")
    result = fit(prepared.method, prepared.sources["train"], prepared.sources.get("val"),
                 prepared.labels.get("val"), cfg, run_dir, resume=resume)
    results = {
        "name": recipe["name"],
        "method": recipe["method"]["name"],
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        **result.best_val,
    }
    if "test" in prepared.sources:
        results.update(_evaluate(prepared, "test", cfg))
    results["seconds"] = time.perf_counter() - started
    if info.is_main:  # written last and atomically: its presence means the run is complete
        with atomic_write(run_dir / "results.json", "w") as f:
            json.dump(results, f, indent=1)
    return results


def _evaluate(prepared: PreparedRun, split: str, cfg: TrainConfig) -> dict[str, float]:
    device = next(prepared.method.parameters()).device
    logits = evaluate_logits(prepared.method, prepared.sources[split], cfg.eval_batch_size, device)
    return score_report(logits, prepared.labels[split], prefix=f"{split}_")


def load_run(run_dir: str | Path) -> PreparedRun:
    """Rebuild a finished run from its folder (recipe, saved mask) with its best weights."""
    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: no config.yaml in it")
    recipe = load_recipe(config)
    if (run_dir / "mask.npz").is_file():
        recipe["protocol"]["mask_file"] = str(run_dir / "mask.npz")
    prepared = prepare(recipe)
    load_checkpoint(run_dir / "checkpoints" / "best", prepared.method)
    return prepared


def evaluate_run(run_dir: str | Path, split: str = "test") -> dict[str, float]:
    """Metrics of a finished run's best checkpoint on ``split``."""
    prepared = load_run(run_dir)
    cfg = TrainConfig(**prepared.recipe["train"])
    if split not in prepared.sources:
        raise ValueError(f"split {split!r} is not part of this run's recipe")
    prepared.method.to(resolve_device(cfg.device))
    return _evaluate(prepared, split, cfg)


def predict_images(
    run_dir: str | Path, images: list[str | Path], top_k: int = 5, batch_size: int = 16
) -> list[dict]:
    """Class probabilities of a finished run for image files, best first.

    Returns one ``{"image", "labels": [{"label", "score"}, ...]}`` per image, with the ``top_k``
    classes by probability.
    """
    prepared = load_run(run_dir)
    model = prepared.method
    if not isinstance(model, EncoderHead):
        features = prepared.recipe["features"]
        model = EncoderHead(_create_encoder({"name": features["encoder"], **features}), model)
    source = ImageBatches([Path(p) for p in images],
                          np.zeros((len(images), prepared.data.num_classes), dtype=np.int8),
                          model.encoder.transform(train=False))
    device = resolve_device(prepared.recipe["train"].get("device", "auto"))
    logits = evaluate_logits(model.to(device), source, batch_size, device)
    probs = torch.sigmoid(logits)
    top = probs.topk(min(top_k, probs.shape[1]), dim=1)
    names = prepared.data.class_names
    return [
        {
            "image": str(path),
            "labels": [{"label": names[c], "score": round(float(s), 6)}
                       for s, c in zip(scores.tolist(), classes.tolist(), strict=True)],
        }
        for path, scores, classes in zip(images, top.values, top.indices, strict=True)
    ]
