"""LLM checkpoint work that needs transformers (and torch), kept out of the drivers' imports:
converting a bundled GGUF into a checkpoint the engines load, and reading its special tokens.
"""

from __future__ import annotations

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


def special_tokens(model_dir: Path) -> list[str]:
    """Every special token of the checkpoint's tokenizer (chat markers included): text that
    the tokenizer would turn into a control token if input data carried it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    added = [t.content for t in tok.added_tokens_decoder.values() if t.special]
    return sorted(set(tok.all_special_tokens) | set(added))
