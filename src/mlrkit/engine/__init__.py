"""From recipes to run folders and back.

- :mod:`~mlrkit.engine.recipe`: load and check a recipe (YAML, inheritance, overrides);
- :mod:`~mlrkit.engine.sources`: a recipe's data, protocol mask and batches (features or images);
- :mod:`~mlrkit.engine.prepare`: the method, label embeddings and teacher a recipe asks for;
- :mod:`~mlrkit.engine.run`: train a recipe into a run folder (:func:`~mlrkit.engine.run.train_run`);
- :mod:`~mlrkit.engine.trainer`: the training loop, validation and checkpoints;
- :mod:`~mlrkit.engine.inference`: load a finished run, evaluate it, predict, score label names;
- :mod:`~mlrkit.engine.run_folder`, :mod:`~mlrkit.engine.run_files`: what a run folder holds.

Nothing is imported here: ``import mlrkit.engine.run`` loads only what training needs.
"""
