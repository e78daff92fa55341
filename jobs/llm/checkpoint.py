"""LLM checkpoint work kept out of the drivers' imports: converting a bundled GGUF into a
checkpoint the engines load (transformers and torch), and reading its special tokens.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


def convert_gguf(gguf: Path, out: Path) -> None:
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


# The tokenizer_config.json keys that name special tokens (transformers' named specials).
_NAMED_SPECIALS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
    "additional_special_tokens",
    "extra_special_tokens",
)


def special_tokens(model_dir: Path) -> list[str]:
    """Every special token of the checkpoint's tokenizer (chat markers included): text that
    the tokenizer would turn into a control token if input data carried it.

    Read with `tokenizers` from tokenizer.json plus the named specials of
    tokenizer_config.json, not through transformers' AutoTokenizer: importing transformers
    (and torch with it) cost every prepare about 6 s. A checkpoint without tokenizer.json
    (a slow-only tokenizer) is read through transformers.
    """
    if not (model_dir / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        added = [t.content for t in tok.added_tokens_decoder.values() if t.special]
        return sorted(set(tok.all_special_tokens) | set(added))
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    found = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    config = model_dir / "tokenizer_config.json"
    named = json.loads(config.read_text()) if config.is_file() else {}
    for key in _NAMED_SPECIALS:
        found |= set(_token_texts(named.get(key)))
    return sorted(found)


def _token_texts(value: object) -> list[str]:
    """The texts of a tokenizer_config.json special-token entry: a string, an AddedToken
    dict ({"content": ...}), or a list or dict of them."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        if isinstance(value.get("content"), str):
            return [value["content"]]
        return [t for v in value.values() for t in _token_texts(v)]
    if isinstance(value, list):
        return [t for v in value for t in _token_texts(v)]
    return []
