"""``hicae serve``: an HTTP service for compressed contexts (compress once, ask many times).

- ``store``: memory files by content-addressed id, written atomically;
- ``hot``: loaded memories and their decoder prefix KV caches in an LRU bounded in bytes;
- ``engine``: the one worker thread that runs the model, its bounded queue and micro-batcher;
- ``app``: the FastAPI routes, limits, auth and error mapping; ``schemas``: request bodies;
- ``settings``: ``ServeConfig``, the server's limits.

Needs the ``serve`` extra (``pip install 'hicae[serve]'``: FastAPI and uvicorn).
"""
