"""Files in and out: checkpoints (``checkpoint_files``: a model's files; ``checkpoint_meta``: the config files;
``checkpoint``: ``load_icae``), importing ICAE v2 weights (``migration``),
finding a checkpoint's base model (``base_resolve``, ``cache``), atomic writes (``fileio``) and weights
fingerprints (``fingerprint``).

``fileio``, ``fingerprint`` and ``cache`` are leaves (they import only ``hicae.errors``) that the core may use;
the model classes' I/O methods call ``checkpoint_files``; ``checkpoint`` and ``migration`` build models, so they
sit above the model classes (tests/test_imports.py).
"""
