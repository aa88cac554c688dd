"""Every special token and the chat format, read from the tokenizer (nothing hard-coded to one model).

Qwen has no BOS token; its EOS is ``<|endoftext|>`` for base tokenizers and ``<|im_end|>`` for chat
ones, and Qwen2.5 and Qwen3 chat templates differ (default system prompt; thinking tags). So we
render the tokenizer's own template around a placeholder and split there.

User text (training data, texts to compress, prompts) is tokenised as *text*: a string such as
``<|endoftext|>``, ``<|im_end|>`` or ``<think>`` inside it becomes ordinary tokens, never the
control id, so a text cannot end its reconstruction early or close its own chat turn. Only
hicae's layout, the chat template's own text and the BOS convention (``bos_prefix``) put special
ids in a sequence.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, DataError
from .layout import FT, SLOT, DecoderExample, with_target

# A string no template alters and no text contains; the memory slots go where it renders.
PLACEHOLDER = "\u2063HICAE_MEMORY\u2063"
# Marks where the user's content ends in a rendering, so that it can be tokenised as text.
CONTENT_END = "\u2063HICAE_END\u2063"


def _ids(tokenizer: Any, text: str) -> list[int]:
    """Ids of hicae's own text (a rendered chat template): its special-token strings are special ids."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _as_list(x: Any) -> list[int]:
    if x is None:
        return []
    if isinstance(x, int):
        return [x]
    return [int(i) for i in x]


def special_ids(tokenizer: Any) -> set[int]:
    """Ids of every special token: the named ones and added tokens marked special.

    A tokenizer converted from GGUF (or saved without ``additional_special_tokens``) names only
    ``<|endoftext|>``; ``<|im_start|>`` / ``<|im_end|>`` are special only in its added-tokens table.
    """
    ids = set(tokenizer.all_special_ids)
    for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def bos_prefix(tokenizer: Any, mode: str = "auto") -> list[int]:
    """Ids put before every compressed text (``ICAEConfig.bos``): ``[BOS]`` or nothing.

    ``auto``: BOS when the tokenizer itself adds it to a text by default (Mistral/Llama: ``<s>``),
    as ICAE v2 tokenises (``tokenizer(text)``); Qwen has no BOS, so nothing. ``always``: the
    tokenizer's BOS, which must exist. ``never``: nothing.
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    if mode == "never":
        return []
    if mode == "always":
        if bos is None:
            raise ConfigError("bos='always' but the tokenizer has no BOS token; use bos='auto' or 'never'")
        return [bos]
    if mode != "auto":
        raise ConfigError(f"bos must be auto, always or never, got {mode!r}")
    if bos is None:  # nothing to add (Qwen; a minimal tokenizer that cannot even be called)
        return []
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    default = tokenizer(probe)["input_ids"]
    return [bos] if bos is not None and default[: len(plain) + 1] == [bos] + plain else []


def _prefixes_space(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a space marker before a text itself (SentencePiece's dummy prefix:
    ``"a"`` and ``" a"`` are the same ids); byte-level BPE (Qwen) does not."""
    return tokenize_one(tokenizer, "a") == tokenize_one(tokenizer, " a")


@dataclass
class SpecialTokens:
    """Ids and chat pieces of one tokenizer (and the base model's generation config)."""

    eos_id: int  # ends an [AE] reconstruction: the tokenizer's EOS
    pad_id: int
    stop_ids: list[int]  # generation stops on any of these
    chat_end_id: int | None  # ends an assistant turn in the chat template (Qwen: <|im_end|>)
    tokenizer: Any = field(repr=False)
    chat_kwargs: dict[str, Any] = field(default_factory=dict)
    text_prefix: list[int] = field(default_factory=list)  # before each compressed text: [BOS] or [] (bos_prefix)
    # the tokenizer supplies the space before a text itself (SentencePiece), so the template's space
    # before the user content is left to the content (see user_turn)
    prefixes_space: bool = False

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, generation_config: Any = None, bos: str = "auto") -> "SpecialTokens":
        eos = tokenizer.eos_token_id
        gen_eos = _as_list(getattr(generation_config, "eos_token_id", None))
        if eos is None:
            if not gen_eos:
                raise ConfigError("the tokenizer has no EOS token and the model's generation config names none")
            eos = gen_eos[0]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        # Qwen3's template takes enable_thinking; answers from memory are non-thinking. Other
        # templates ignore unknown kwargs.
        chat_kwargs = {"enable_thinking": False}
        chat_end = cls._find_chat_end(tokenizer, chat_kwargs)
        stops = [eos] + gen_eos + ([chat_end] if chat_end is not None else [])
        stop_ids = list(dict.fromkeys(stops))  # unique, ordered
        return cls(eos, pad, stop_ids, chat_end, tokenizer, chat_kwargs, text_prefix=bos_prefix(tokenizer, bos),
                   prefixes_space=_prefixes_space(tokenizer))

    def text_ids(self, texts: list[str]) -> list[list[int]]:
        """Ids of texts to compress (and to reconstruct): ``text_prefix`` then each text as text."""
        return [self.text_prefix + ids for ids in tokenize(self.tokenizer, texts)]

    @staticmethod
    def _find_chat_end(tokenizer: Any, chat_kwargs: dict[str, Any]) -> int | None:
        """The special token that closes an assistant turn, read off a rendering of the template."""
        if not getattr(tokenizer, "chat_template", None):
            return None
        msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": PLACEHOLDER}]
        text = tokenizer.apply_chat_template(msgs, tokenize=False, **chat_kwargs)
        after = text.split(PLACEHOLDER, 1)[1] if PLACEHOLDER in text else ""
        ids = _ids(tokenizer, after)
        if ids and ids[0] in special_ids(tokenizer):
            return ids[0]
        return tokenizer.eos_token_id

    # ---- chat layout -------------------------------------------------------------------------

    def user_turn(self, content: str) -> tuple[list[int], list[int], list[int]]:
        """Ids of a one-message conversation whose user content is ``content``, generation prompt
        included (for Qwen3: the empty think block, thinking off), in three parts: the template's
        text before the content, the content, and the template's text after it.

        The template is rendered with the content between two markers (so a template whose text
        depends on the content still sees it); only the template's own text is tokenised with
        special tokens, the content as text (``tokenize``). With a tokenizer that puts the space
        before a text itself (SentencePiece; Mistral's template writes its instruction tag, a
        space, then the content), the template's space before the content is dropped: the
        content's own ids carry it (``"▁What"``), and before the memory no lone ``"▁"`` is left;
        ICAE v2's hard-coded tag ids end the same way.
        """
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ConfigError(
                "the tokenizer has no chat template, so prompts cannot be formatted; "
                "use a chat (Instruct) tokenizer or set tokenizer.chat_template"
            )
        msgs = [{"role": "user", "content": PLACEHOLDER + content + CONTENT_END}]
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **self.chat_kwargs)
        before, _, rest = text.partition(PLACEHOLDER)
        middle, _, after = rest.partition(CONTENT_END)
        if middle != content or PLACEHOLDER in after or CONTENT_END in after:
            raise ConfigError("the chat template does not render the user message verbatim; cannot place the memory")
        if self.prefixes_space and before.endswith(" "):
            before = before[:-1]
        return _ids(tok, before), tokenize_one(tok, content), _ids(tok, after)

    def chat_ids(self, content: str) -> list[int]:
        """A user turn holding ``content`` (as text), ready for the assistant's answer."""
        before, middle, after = self.user_turn(content)
        return before + middle + after

    def chat_pieces(self, prompt: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the memory in a chat turn whose user content is ``<memory><prompt>``.

        The sequence is ``before + [slots] + [FT] + after``; ``after`` holds the prompt (as text)
        and the template's generation prompt.
        """
        before, middle, after = self.user_turn(prompt)
        return before, middle + after

    def answer_end(self) -> list[int]:
        return [self.chat_end_id] if self.chat_end_id is not None else [self.eos_id]

    def ft_example(self, num_slots: int, prompt: str, answer_ids: list[int] | None) -> DecoderExample:
        """Decoder sequence of an instruction: chat(``[slots] [FT] prompt``) then ``answer <end>`` with loss on it."""
        before, after = self.chat_pieces(prompt)
        prefix = before + [SLOT] * num_slots + [FT] + after
        target = [] if answer_ids is None else list(answer_ids) + self.answer_end()
        return with_target(prefix, target)


def fit_length(ids: list[int], limit: int, overlong: str, where: str, option: str) -> list[int]:
    """Apply the over-length policy to a text's ids: refuse an empty text; over ``limit``,
    keep the head (``overlong='truncate'``) or refuse, naming the limit and the option to change."""
    if not ids:
        raise DataError(f"{where} is empty: there is nothing to compress")
    if len(ids) > limit:
        if overlong == "truncate":
            return ids[:limit]
        raise DataError(
            f"{where} has {len(ids)} tokens, over {option}={limit}; "
            f"raise {option}, or pass --overlong truncate to keep the first tokens"
        )
    return ids


def cut_at_stop(rows: list[list[int]], stop_ids: list[int]) -> list[list[int]]:
    """Each generated row up to (not including) its first stop id."""
    stops = set(stop_ids)
    return [row[: next((i for i, t in enumerate(row) if t in stops), len(row))] for row in rows]


def added_token_strings(tokenizer: Any) -> list[str]:
    """Strings the tokenizer turns into added-token ids: special ones (``<|im_end|>``) and markup
    that is not marked special (Qwen3's ``<think>``, ``<tool_call>``, the FIM tokens)."""
    strings = {str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()}
    strings |= set(getattr(tokenizer, "all_special_tokens", []))
    return sorted(s for s in strings if s)


_PLAIN: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def _plain_backend(tokenizer: Any) -> Any:
    """The tokenizer's fast backend without its added-tokens table (built once per tokenizer,
    ~0.5 s for Qwen's vocabulary): every string is then plain BPE, exactly as the text reads."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    plain = _PLAIN.get(tokenizer)
    if plain is None:
        from tokenizers import Tokenizer

        spec = json.loads(backend.to_str())
        spec.update(added_tokens=[], truncation=None, padding=None)
        plain = _PLAIN[tokenizer] = Tokenizer.from_str(json.dumps(spec))
    return plain


def tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each user text, without special tokens (Qwen has no BOS), special-token strings as text.

    A text holding no added token's string is tokenised the usual way (same ids); one that holds
    some goes through the backend without its added tokens, so ``"<|im_end|>"`` becomes the ids
    of ``<|``, ``im``, ``_end``, ``|>``. A tokenizer without a fast backend splits special tokens
    only (``split_special_tokens``).
    """
    if not texts:
        return []
    texts = list(texts)
    markup = added_token_strings(tokenizer)
    marked = [i for i, t in enumerate(texts) if any(m in t for m in markup)]
    out = tokenizer(texts, add_special_tokens=False)["input_ids"] if len(marked) < len(texts) else [[]] * len(texts)
    if marked:
        sub = [texts[i] for i in marked]
        plain = _plain_backend(tokenizer)
        if plain is not None:
            redo = [e.ids for e in plain.encode_batch(sub, add_special_tokens=False)]
        else:
            redo = tokenizer(sub, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        out = list(out)
        for i, ids in zip(marked, redo):
            out[i] = list(ids)
    return out


def tokenize_one(tokenizer: Any, text: str) -> list[int]:
    return tokenize(tokenizer, [text])[0]
