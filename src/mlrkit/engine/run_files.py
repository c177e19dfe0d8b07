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
CHECKSUMS_FILE = "checksums.json"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
EVAL_CACHE_DIR = "eval-cache"
LOCK_FILE = "train.lock"

#: The files a finished run is used from: their SHA-256 go to ``checksums.json`` when training
#: ends, and a run whose files differ is refused (:func:`~mlrkit.engine.run_folder.changed_files`).
CHECKED_FILES = (CONFIG_FILE, RUN_FILE, EMBEDDINGS_FILE, MASK_FILE, SPLIT_FILE, PSEUDO_FILE,
                 CALIBRATION_FILE)
#: ... and every file of the best checkpoint's folder.
CHECKED_FOLDER = f"{CHECKPOINTS_DIR}/best"

#: What mlrkit writes into a run folder besides the lock: a folder holding any of them holds a
#: run, and ``overwrite`` removes exactly these (nothing else the folder may contain).
RUN_ARTIFACTS = (CONFIG_FILE, RUN_FILE, EMBEDDINGS_FILE, MASK_FILE, SPLIT_FILE, PSEUDO_FILE,
                 METRICS_FILE, RESULTS_FILE, CALIBRATION_FILE, CHECKSUMS_FILE, CHECKPOINTS_DIR,
                 TENSORBOARD_DIR, EVAL_CACHE_DIR)
