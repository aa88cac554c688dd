"""Training: JSONL datasets and the collator (``data``), the Trainer (``trainer``) and its run folder
(``run_folder``: atomic checkpoints, resume, rotation), FSDP (``fsdp``; ``fsdp_memory``: its per-GPU memory
table, ``python -m hicae.training.fsdp_memory``) and the loss curve (``plots``).

Above the core and I/O (it saves and resumes checkpoints); it imports no wing (tests/test_imports.py).
"""
