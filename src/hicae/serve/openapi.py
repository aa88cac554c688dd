"""The OpenAPI document of ``hicae serve``: every status a route returns, the error body, and the real
constraints of each field, so that clients generated from it (and schemathesis) meet the server as it is.

FastAPI documents what the pydantic models validate. The server checks more itself, with its own
status and message (400 for an empty text, 413 for a limit of ``ServeConfig``, 400 for an invalid id):
those rules are added to the document here, from the running server's settings:

- a memory id (path or body) is 32 lowercase hex digits;
- a text has a non-space character and at most ``max_text_chars`` characters; at most ``max_texts``
  texts; ``text`` or ``texts``, not both; ``max_slots`` only on a hierarchical checkpoint, at least
  two blocks (``2 * mem_size``);
- at most ``max_prompts`` prompts of at most ``max_prompt_chars`` characters; ``max_new_tokens`` at
  most the server's cap; ``prompt`` or ``prompts``, not both; ``answer`` needs one, ``reconstruct``
  and ``continue`` take none; ``stream`` decodes one row (one prompt); ``temperature``, ``top_p``,
  ``top_k`` and ``seed`` need ``do_sample``;
- chat completions: one user message, text content only, ``memory_id`` as above.

What depends on a stored memory (its number of texts; a text's length in tokens against the
base's window) cannot be stated in a schema: such a request gets 409 (does not fit the memory) or
400 (over the token limit), both documented.
"""

from __future__ import annotations

from typing import Any

from .schemas import ErrorBody
from .settings import ServeConfig

ID_PATTERN = "^[0-9a-f]{32}$"
# A character other than white space as Python's str.isspace (what the server's blank check strips), spelt out:
# regex engines disagree on \s (ECMAScript's lacks U+001C-U+001F and U+0085).
NON_BLANK = "[^\\t\\n\\x0b\\x0c\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"

# One server-sent event of a stream (each validated on its own): its data is a JSON object per piece of text,
# then a final one with the whole output ("done"); chat completions end with the data "[DONE]".
SSE_EVENT = {"type": "object", "required": ["data"], "properties": {
    "event": {"type": "string"}, "id": {"type": "string"},
    "data": {"type": "string", "description": "JSON: {'text'} per piece, then the output with 'done': true; chat "
                                              "completions: chat.completion.chunk objects, then [DONE]"}}}

DESCRIPTIONS = {
    400: "Bad input: malformed JSON, an invalid memory id, a blank text, a text over the token limit, or a "
         "request the route's rules refuse.",
    401: "Missing or wrong API key (send 'Authorization: Bearer <key>').",
    404: "No memory with this id.",
    409: "The memory file is damaged or was made by another model, config or weights; or the request does not "
         "fit the memory (its number of texts).",
    413: "Over one of the server's limits (body bytes, texts, characters, prompts, max_new_tokens).",
    422: "The body does not validate against this schema.",
    429: "The queue is full: retry later (see Retry-After).",
    500: "Internal error (the server log has the details).",
    504: "The request ran past the server's request timeout.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` for these statuses, each with the error body (422 replaces FastAPI's own)."""
    return {c: {"model": ErrorBody, "description": DESCRIPTIONS[c]} for c in (*codes, 500)}


def _prop(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """The non-null branch of an optional property (``anyOf: [X, null]``), or the property itself."""
    p = schema["properties"][name]
    for branch in p.get("anyOf", []):
        if branch.get("type") != "null":
            return branch
    return p


def _texts(schema: dict[str, Any], cfg: ServeConfig, max_slots_min: int | None) -> None:
    for branch in (_prop(schema, "text"), _prop(schema, "texts")["items"]):
        branch.update(maxLength=cfg.max_text_chars, pattern=NON_BLANK)
    _prop(schema, "texts")["maxItems"] = cfg.max_texts
    if max_slots_min is None:  # not a hierarchical checkpoint
        schema["properties"]["max_slots"] = {"type": "null", "description": "Hierarchical checkpoints only."}
    else:
        _prop(schema, "max_slots")["minimum"] = max_slots_min
    schema["oneOf"] = [{"required": ["text"], "properties": {"text": {"type": "string"}}},
                       {"required": ["texts"], "properties": {"texts": {"type": "array"}}}]


_SAMPLING = ("temperature", "top_p", "top_k", "seed")


def _generate(schema: dict[str, Any], cfg: ServeConfig) -> None:
    _prop(schema, "prompt")["maxLength"] = cfg.max_prompt_chars
    prompts = _prop(schema, "prompts")
    prompts.update(maxItems=cfg.max_prompts)
    prompts["items"]["maxLength"] = cfg.max_prompt_chars
    _prop(schema, "max_new_tokens")["maximum"] = cfg.max_new_tokens
    given = {"anyOf": [{"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
                       {"required": ["prompts"], "properties": {"prompts": {"type": "array"}}}]}
    schema["allOf"] = [
        # sampling options need do_sample: true
        {"anyOf": [{"required": ["do_sample"], "properties": {"do_sample": {"const": True}}},
                   {"properties": {k: {"type": "null"} for k in _SAMPLING}}]},
        # "prompt" or "prompts", not both
        {"not": {"required": ["prompt", "prompts"],
                 "properties": {"prompt": {"type": "string"}, "prompts": {"type": "array"}}}},
        # answer (the default) needs a prompt; reconstruct and continue take none
        {"anyOf": [{"properties": {"task": {"const": "answer"}}, **given},
                   {"required": ["task"], "properties": {"task": {"enum": ["reconstruct", "continue"]},
                                                         "prompt": {"type": "null"}, "prompts": {"type": "null"}}}]},
        # a stream is one row: at most one prompt
        {"anyOf": [{"properties": {"stream": {"const": False}}},
                   {"properties": {"prompts": {"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 1}]}}}]},
    ]


def _chat(schema: dict[str, Any], message: dict[str, Any], cfg: ServeConfig) -> None:
    schema["properties"]["memory_id"]["pattern"] = ID_PATTERN
    schema["properties"]["messages"]["maxItems"] = 1
    for name in ("max_tokens", "max_completion_tokens"):
        _prop(schema, name)["maximum"] = cfg.max_new_tokens
    _prop(schema, "temperature")["anyOf"] = [{"const": 0}, {"minimum": 0.001}]
    message["properties"]["role"] = {"const": "user", "title": "Role", "description": "One user message."}
    message["properties"]["content"] = {"title": "Content", "anyOf": [
        {"type": "string", "maxLength": cfg.max_prompt_chars},
        {"type": "array", "minItems": 1, "maxItems": 1, "items": {
            "type": "object", "required": ["type", "text"],
            "properties": {"type": {"const": "text"}, "text": {"type": "string", "maxLength": cfg.max_prompt_chars}}}},
    ]}


def document(schema: dict[str, Any], cfg: ServeConfig, mem_size: int, hierarchical: bool) -> dict[str, Any]:
    """``schema`` (FastAPI's document) with the server's own rules added (module docstring); in place."""
    comps = schema["components"]["schemas"]
    for name in ("CompressRequest", "AppendRequest"):
        if name in comps:
            _texts(comps[name], cfg, 2 * mem_size if hierarchical else None)
    _generate(comps["GenerateRequest"], cfg)
    _chat(comps["ChatRequest"], comps["ChatMessage"], cfg)
    links = {}
    for name, path in schema["paths"].items():
        for method, op in path.items():
            for p in op.get("parameters", []):
                if p["name"] == "memory_id":
                    p["schema"]["pattern"] = ID_PATTERN
                    # the id a compress (or append) returns addresses this operation
                    links[op["operationId"]] = {"operationId": op["operationId"],
                                                "parameters": {"memory_id": "$response.body#/id"}}
    for name in ("/v1/memories", "/v1/memories/{memory_id}/append"):
        for status in ("200", "201"):
            if name in schema["paths"]:
                schema["paths"][name]["post"]["responses"][status]["links"] = links
    return schema
