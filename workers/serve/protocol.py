"""The OpenAI request and response shapes: parsing with 4xx errors, and the JSON bodies.

``parse_completion`` and ``parse_chat`` turn a request body into one ``GenerationRequest``
or raise ``APIError`` with the status, message and ``param`` OpenAI's API would give (bad
JSON, unknown model, a prompt or ``max_tokens`` beyond the context, unsupported options).
Fields the built-in engine does not use and that change nothing (``user``, zero penalties)
are accepted and ignored. vLLM's extensions ``top_k``, ``stop_token_ids``, ``ignore_eos``
and ``return_token_ids`` are understood.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

from .request import SamplingParams
from .tokenizer import ByteTokenizer

#: Default ``max_tokens`` of /v1/completions (OpenAI's); chat defaults to the rest of the context.
COMPLETION_MAX_TOKENS = 16
ROLES = ("system", "user", "assistant", "tool", "developer")


class APIError(Exception):
    """An OpenAI-style error: ``{"error": {"message", "type", "param", "code"}}`` with a status."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None, type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What parsing needs to know about the served model."""

    name: str
    max_model_len: int
    tokenizer: ByteTokenizer


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    kind: Literal["completion", "chat"]
    prompt_token_ids: list[int]
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    return_token_ids: bool = False
    #: Strings that end the output (cut before them), checked on the decoded text.
    stop: tuple[str, ...] = ()


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, an integer of over 4,300 digits, nesting too deep
        raise APIError(400, f"We could not parse the JSON body of your request ({e}). Send valid JSON.") from None
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    return body


def parse_completion(body: dict[str, Any], model: ModelInfo) -> GenerationRequest:
    _check_model(body, model)
    if "prompt" not in body:
        raise APIError(400, "prompt is required", param="prompt")
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        ids = _encode(prompt, model, "prompt")
    elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        ids = list(prompt)
    elif isinstance(prompt, list) and all(isinstance(p, str | list) for p in prompt):
        raise APIError(400, f"one prompt per request is supported; got {len(prompt)}", param="prompt")
    else:
        raise APIError(400, "prompt must be a string or a list of token ids", param="prompt")
    for name in ("echo", "suffix"):
        if body.get(name):
            raise APIError(400, f"{name} is not supported by this server", param=name)
    if body.get("logprobs") is not None:
        raise APIError(400, "logprobs is not supported by this server", param="logprobs")
    if _get(body, "best_of", int, 1) != 1:
        raise APIError(400, "best_of must be 1 on this server", param="best_of")
    return _request("completion", body, ids, model, "prompt", COMPLETION_MAX_TOKENS)


def parse_chat(body: dict[str, Any], model: ModelInfo) -> GenerationRequest:
    _check_model(body, model)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list of {role, content} objects", param="messages")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise APIError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}", param=f"messages[{i}].role")
        turns.append({"role": m["role"], "content": _content(m.get("content"), i)})
    if body.get("logprobs"):
        raise APIError(400, "logprobs is not supported by this server", param="logprobs")
    ids = _encode(model.tokenizer.apply_chat_template(turns), model, "messages")
    return _request("chat", body, ids, model, "messages", None)


def _request(kind: Literal["completion", "chat"], body: dict[str, Any], ids: list[int], model: ModelInfo, prompt_param: str, default_max: int | None) -> GenerationRequest:
    limit = model.max_model_len
    if not ids:
        raise APIError(400, "the prompt must have at least one token", param=prompt_param)
    vocab = model.tokenizer.vocab_size
    if bad := [t for t in ids if not 0 <= t < vocab]:
        raise APIError(400, f"token id {bad[0]} is outside the vocabulary (0 .. {vocab - 1})", param=prompt_param)
    if len(ids) >= limit:
        raise APIError(
            400, f"This model's maximum context length is {limit} tokens. However, your request has {len(ids)} input tokens "
            f"(at most {limit - 1}, to leave room for one output token). Please reduce the length of the input.",
            param=prompt_param, code="context_length_exceeded",
        )
    max_param = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _get(body, max_param, int, None)
    if max_tokens is None:
        max_tokens = default_max if default_max is not None else limit - len(ids)
    elif max_tokens < 1:
        raise APIError(400, f"{max_param} must be at least 1, got {max_tokens}", param=max_param)
    elif len(ids) + max_tokens > limit:
        raise APIError(
            400, f"This model's maximum context length is {limit} tokens. However, you requested {len(ids) + max_tokens} tokens "
            f"({len(ids)} in the {prompt_param}, {max_tokens} in the completion). Please reduce the length of the {prompt_param} or completion.",
            param=max_param, code="context_length_exceeded",
        )
    if _get(body, "n", int, 1) != 1:
        raise APIError(400, "n must be 1 on this server", param="n")
    for name in ("presence_penalty", "frequency_penalty"):
        if _get(body, name, float, 0.0) != 0:
            raise APIError(400, f"{name} is not supported by this server (send 0)", param=name)
    temperature = _get(body, "temperature", float, 1.0)
    if not 0 <= temperature <= 2:
        raise APIError(400, f"temperature must be between 0 and 2, got {temperature}", param="temperature")
    top_p = _get(body, "top_p", float, 1.0)
    if not 0 < top_p <= 1:
        raise APIError(400, f"top_p must be in (0, 1], got {top_p}", param="top_p")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if not (stop is None or isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)):
        raise APIError(400, "stop must be a non-empty string or a list of them", param="stop")
    stop = tuple(stop or ())
    stop_ids = _get(body, "stop_token_ids", list, [])
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in stop_ids):
        raise APIError(400, "stop_token_ids must be a list of token ids", param="stop_token_ids")
    seed = _get(body, "seed", int, None)
    if seed is not None and not -(2**63) <= seed < 2**64:  # what a torch.Generator takes; beyond, it would fail in the engine
        raise APIError(400, f"seed must be an integer from -2**63 to 2**64 - 1, got {seed}", param="seed")
    eos = model.tokenizer.eos_id
    options = _get(body, "stream_options", dict, {}) or {}
    params = SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=_get(body, "top_k", int, 0),
        seed=seed, ignore_eos=_get(body, "ignore_eos", bool, False),
        stop_token_ids=tuple(stop_ids) + ((eos,) if eos is not None else ()),
    )
    return GenerationRequest(
        kind=kind, prompt_token_ids=ids, params=params, stream=_get(body, "stream", bool, False),
        include_usage=bool(options.get("include_usage")), return_token_ids=_get(body, "return_token_ids", bool, False), stop=stop,
    )


def _check_model(body: dict[str, Any], model: ModelInfo) -> None:
    name = body.get("model")
    if name is not None and name != model.name:
        raise APIError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")


def _get(body: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    """``body[name]`` checked against ``kind`` (an int is a float; a bool is not an int)."""
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, int | float) and not isinstance(value, bool) if kind is float else isinstance(value, kind)
    if kind is int and isinstance(value, bool):
        ok = False
    if ok and kind is float and isinstance(value, int) and abs(value) >= 2**1024:
        raise APIError(400, f"{name} is beyond a float's range, got an integer of {len(str(value))} digits", param=name)
    if not ok:
        raise APIError(400, f"{name} must be {_NAMES[kind]}, got {json.dumps(value)[:100]}", param=name)
    return float(value) if kind is float else value


_NAMES = {int: "an integer", float: "a number", bool: "true or false", list: "a list", dict: "an object"}


def _content(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise APIError(400, f"messages[{i}].content must be a string or a list of text parts", param=f"messages[{i}].content")


def _encode(text: str, model: ModelInfo, param: str) -> list[int]:
    try:
        return model.tokenizer.encode(text)
    except ValueError as e:  # a vocabulary without byte tokens
        raise APIError(400, str(e), param=param) from None


# ---------------------------------------------------------------------------------- responses


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens, "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def choice(req: GenerationRequest, text: str, token_ids: list[int], finish_reason: str | None, *, delta: bool, first: bool = False) -> dict[str, Any]:
    """One entry of ``choices``: ``text`` for completions, ``message`` or ``delta`` for chat."""
    out: dict[str, Any] = {"index": 0}
    if req.kind == "completion":
        out["text"] = text
        out["logprobs"] = None
    elif delta:
        out["delta"] = ({"role": "assistant"} if first else {}) | ({"content": text} if text or first else {})
        out["logprobs"] = None
    else:
        out["message"] = {"role": "assistant", "content": text}
        out["logprobs"] = None
    out["finish_reason"] = finish_reason
    if req.return_token_ids:
        out["token_ids"] = token_ids
        if first or not delta:
            out["prompt_token_ids"] = req.prompt_token_ids
    return out


def envelope(req: GenerationRequest, request_id: str, created: int, model: str, choices: list[dict[str, Any]], *, chunk: bool, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    kind = {("completion", False): "text_completion", ("completion", True): "text_completion",
            ("chat", False): "chat.completion", ("chat", True): "chat.completion.chunk"}[req.kind, chunk]
    out = {"id": request_id, "object": kind, "created": created, "model": model, "choices": choices}
    if usage is not None or not chunk:
        out["usage"] = usage
    return out
