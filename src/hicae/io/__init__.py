"""Files in and out: checkpoints (``checkpoint``, ``checkpoint_meta``), importing ICAE v2 weights (``migration``),
finding a checkpoint's base model (``base_resolve``, ``cache``), atomic writes (``fileio``) and weights
fingerprints (``fingerprint``).

``fileio``, ``fingerprint`` and ``cache`` are leaves (they import only ``hicae.errors``) that the core may use;
the rest sits above the model classes (tests/test_imports.py).
"""
