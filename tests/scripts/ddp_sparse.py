"""Train a linear head from sharded features and a sparse label store with ``fit`` (one process or
under torchrun), then score the known entries rank by rank (each rank its own shards) and merge:
rank 0 writes the weights and the figures. Used by tests/test_sparse_labels.py."""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from mlrkit import metrics
from mlrkit.data.sharded_features import ShardedFeatures
from mlrkit.data.sparse_labels import SparseLabels
from mlrkit.distributed import current_info, end_distributed_process
from mlrkit.engine.batches import SparseFeatureBatches
from mlrkit.engine.trainer import TrainConfig, fit
from mlrkit.methods import TaskSpec, create_method

data, out = Path(sys.argv[1]), Path(sys.argv[2])
labels, features = SparseLabels.load(data / "labels"), ShardedFeatures(data / "features")
torch.manual_seed(0)
head = create_method("linear", TaskSpec(labels.num_classes, features.shape[1:], labels))
cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, device="cpu", progress=False, seed=0)
fit(head, SparseFeatureBatches(features, labels), None, None, cfg, out / "run")
info = current_info()
known = metrics.KnownEntryScores(labels)
rows = features.rows_of_rank(info.rank, info.world_size)
with torch.inference_mode():
    for batch in np.array_split(rows, 3):
        known.update(batch, head.eval()(torch.from_numpy(features[batch].astype(np.float32))).logits)
known.merge_across_ranks()
if info.rank == 0:
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, out / "head.safetensors")
    result = known.mean_average_precision()
    f1 = known.precision_recall_f1(threshold=0.0)
    (out / "figures.json").write_text(json.dumps({"mAP": result.value, "OF1": f1.overall_f1}))
end_distributed_process(0)  # leaves without the interpreter's finalization (gloo threads)
