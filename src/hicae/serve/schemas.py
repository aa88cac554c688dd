"""Request bodies of the HTTP API (pydantic: FastAPI validates them and documents them in /docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..sampling import MAX_SEED, MIN_TEMPERATURE, SAMPLING_ONLY, SamplingOptions
from ..tasks import PROMPTED, UserTask


def _no_bool(v: Any) -> Any:
    """JSON true/false is not a number (the schema says number): pydantic's lax mode would read it as 1/0."""
    if isinstance(v, bool):
        raise ValueError("must be a number, not a boolean")
    return v


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong, in one line.")
    type: str = Field(description="invalid_request, unauthorized, not_found, unusable_memory, conflict, too_large, "
                                  "queue_full, timeout, http_error, server_error or internal_error.")
    code: int = Field(description="The HTTP status.")


class ErrorBody(BaseModel):
    """Every failure's body (OpenAI's error shape)."""

    error: ErrorDetail


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not silently ignored


class _Texts(_Strict):
    text: str | None = Field(None, description="One text.")
    texts: list[str] | None = Field(None, min_length=1, description="Several texts: one memory file, one entry each.")
    max_slots: int | None = Field(None, ge=1, description="Hierarchical checkpoints: memory budget per text, in slots.")

    @model_validator(mode="after")
    def _one_of(self) -> "_Texts":
        if (self.text is None) == (self.texts is None):
            raise ValueError('give either "text" or "texts"')
        return self

    @property
    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class CompressRequest(_Texts):
    """Compress text(s) into a stored memory."""


class AppendRequest(_Texts):
    """Append text to a hierarchical memory (one text per entry, or one text for a one-text memory)."""


class Sampling(_Strict):
    """The fields of ``SamplingOptions`` (one each), with the limits a JSON body must keep."""

    max_new_tokens: int | None = Field(
        None, ge=1, description="Default: 128; reconstruct: the text's length + 8 (both within the server's cap).")
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    # below 0.001 the logits divided by the temperature overflow: greedy decoding is what such a request means
    temperature: float | None = Field(None, ge=MIN_TEMPERATURE, description="Sampling temperature (needs do_sample).")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass (needs do_sample).")
    top_k: int | None = Field(None, ge=1, description="Sample among the k likeliest tokens (needs do_sample).")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Seed of the sampler (needs do_sample; sampled requests "
                                                                 "run alone).")

    _numbers = field_validator("max_new_tokens", "temperature", "top_p", "top_k", "seed", mode="before")(_no_bool)

    @model_validator(mode="after")
    def _sampling_options_need_sampling(self) -> "Sampling":
        given = [k for k in SAMPLING_ONLY if getattr(self, k) is not None]
        if given and not self.do_sample:  # greedy decoding would ignore them: the caller asked for sampling
            raise ValueError(f"{', '.join(given)} only apply when sampling: set \"do_sample\": true, or leave "
                             f"{'them' if len(given) > 1 else 'it'} out for greedy decoding")
        return self

    def options(self) -> SamplingOptions:
        return SamplingOptions(**{f: getattr(self, f) for f in Sampling.model_fields})


class GenerateRequest(Sampling):
    """Decode from a stored memory."""

    prompt: str | None = None
    prompts: list[str] | None = Field(None, min_length=1)
    task: UserTask = PROMPTED
    stream: bool = Field(False, description="Server-sent events: one event per piece of text, then a final one.")

    @model_validator(mode="after")
    def _prompts(self) -> "GenerateRequest":
        if self.prompt is not None and self.prompts is not None:
            raise ValueError('give "prompt" or "prompts", not both')
        return self

    @property
    def all_prompts(self) -> list[str] | None:
        return [self.prompt] if self.prompt is not None else self.prompts


class ChatMessage(BaseModel):
    role: str
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if len(self.content) != 1:  # the question is one text: one part (the document says so)
            raise ValueError(f"message content has {len(self.content)} parts: send the question as one text part "
                             "(or as a string)")
        part = self.content[0]
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ValueError(f"message content part of type {part.get('type')!r}: only text parts are supported")
        return part["text"]


class ChatRequest(BaseModel):
    """OpenAI's chat-completions body; ``memory_id`` (an extension) names the memory the question is about."""

    model_config = ConfigDict(extra="ignore")  # OpenAI clients send options hicae has no use for
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    memory_id: str = Field(description="The memory to answer from (OpenAI client: extra_body={'memory_id': ...}).")
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, description=f"0 or absent: greedy; else at least {MIN_TEMPERATURE}.")
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    n: int = Field(1, ge=1, le=1, description="One choice per request.")
    stream: bool = False

    _numbers = field_validator("max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "n",
                               mode="before")(_no_bool)

    @model_validator(mode="after")
    def _temperature(self) -> "ChatRequest":
        if self.temperature and self.temperature < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {self.temperature}")
        return self

    def options(self) -> SamplingOptions:
        """OpenAI's fields as ``SamplingOptions``: a temperature (not 0) samples; else greedy, top_p and seed unused."""
        n = self.max_completion_tokens or self.max_tokens
        if not self.temperature:
            return SamplingOptions(max_new_tokens=n)
        return SamplingOptions(max_new_tokens=n, do_sample=True, temperature=self.temperature, top_p=self.top_p,
                               seed=self.seed)
