"""The decoding wing: from a memory and a request to new tokens.

- ``requests.py``     a request's rows, prompts and decoder layouts, worked out once (``decode_request``)
- ``run.py``          ``decode``: one ``generate`` call over a request's rows; ``build_prefix_cache``
- ``prefix_cache.py`` compress once, ask many: the KV cache of a memory's prompt-independent prefix
- ``static.py``       static-KV-cache and compiled decoding (``ICAE.set_decoding``)
- ``generation.py``   hicae's explicit generation config (the base's own plays no part); the plain-base baseline
- ``handoff.py``      the decoder's input embeddings, for another engine (vLLM)

It imports only the core (settings, layouts, tasks, tokens, batching, memory, errors), never the
model classes, I/O or a wing: the model is passed in and used through its public methods
(``decoder_inputs``, ``placements``, ``batch_positions``, ``eval_mode``, ``check_memory``).
``ICAE.generate`` / ``reconstruct`` / ``continue_text`` / ``prefix_cache`` and the server's engine call it.
"""
