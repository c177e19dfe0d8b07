"""The names of the files mlrkit writes into a run folder, defined once (what each holds:
:mod:`mlrkit.engine.run`)."""

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
EMBEDDINGS_FILE = "label_embeddings.safetensors"
MASK_FILE = "mask.npz"
SPLIT_FILE = "class_split.json"
PSEUDO_FILE = "pseudo_labels.npz"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
CALIBRATION_FILE = "calibration.json"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
EVAL_CACHE_DIR = "eval-cache"
LOCK_FILE = "train.lock"

#: What mlrkit writes into a run folder besides the lock: a folder holding any of them holds a
#: run, and ``overwrite`` removes exactly these (nothing else the folder may contain).
RUN_ARTIFACTS = (CONFIG_FILE, RUN_FILE, EMBEDDINGS_FILE, MASK_FILE, SPLIT_FILE, PSEUDO_FILE,
                 METRICS_FILE, RESULTS_FILE, CALIBRATION_FILE, CHECKPOINTS_DIR, TENSORBOARD_DIR,
                 EVAL_CACHE_DIR)
