"""transformers engine: batched greedy/sampled generation on CPU or one GPU.

The default on machines without vLLM. Left padding keeps every prompt's last
token at the end of the row, so one `generate` call serves a whole batch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from jobs.llm.base import Generation
from jobs.llm.config import LLMSettings
from jobs.llm.fit import fit_prompt

log = logging.getLogger(__name__)


class HFEngine:
    def __init__(self, conf: LLMSettings, model_dir: Path, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.conf = conf
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, conf.dtype)
        ).to(self.device)
        self.model.eval()
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        eos_ids.add(self.tokenizer.eos_token_id)  # the chat turn end, e.g. <|im_end|>
        self.eos_ids = sorted(eos_ids)
        # Seeded once per engine (and per call when a seed is given): sampled answers repeat
        # for the same batches in the same order.
        torch.manual_seed(conf.seed)
        log.info("transformers engine: %s on %s (%s)", model_dir, self.device, conf.dtype)

    def _chat(self, prompt: str) -> str:
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )

    def _n_tokens(self, prompt: str) -> int:
        return len(self.tokenizer(self._chat(prompt), add_special_tokens=False)["input_ids"])

    def fit(self, prompts: list[str]) -> list[tuple[str, int]]:
        """Each prompt shortened to leave llm.max_new_tokens of the context (see fit.py)."""
        budget = self.conf.max_model_len - self.conf.max_new_tokens
        return [fit_prompt(p, self._n_tokens, budget) for p in prompts]

    def generate(
        self, prompts: list[str], *, seed: int | None = None, temperature: float | None = None
    ) -> list[Generation]:
        if seed is not None:
            torch.manual_seed(seed)
        temp = self.conf.temperature if temperature is None else temperature
        out: list[Generation] = []
        step = self.conf.batch_size
        fitted = self.fit(prompts)
        for start in range(0, len(fitted), step):
            out.extend(self._generate_batch(fitted[start : start + step], temp))
        return out

    @torch.inference_mode()
    def _generate_batch(
        self, fitted: list[tuple[str, int]], temperature: float
    ) -> list[Generation]:
        enc = self.tokenizer(
            [self._chat(p) for p, _ in fitted],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        ).to(self.device)
        input_lengths = enc["attention_mask"].sum(dim=1).tolist()
        sampling = temperature > 0
        kwargs: dict[str, float] = {}
        if sampling:
            kwargs = {"temperature": temperature, "top_p": self.conf.top_p}
        generated = self.model.generate(
            **enc,
            max_new_tokens=self.conf.max_new_tokens,
            do_sample=sampling,
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            **kwargs,
        )[:, enc["input_ids"].shape[1] :].tolist()
        results = []
        for ids, n_in, (_, dropped) in zip(generated, input_lengths, fitted, strict=True):
            stop = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
            # After a row stops, generate pads it to the batch's length: cut at the stop token.
            kept = ids if stop is None else ids[: stop + 1]
            results.append(
                Generation(
                    text=self.tokenizer.decode(kept, skip_special_tokens=True).strip(),
                    input_tokens=int(n_in),
                    output_tokens=len(kept),
                    finish_reason="length" if stop is None else "stop",
                    history_dropped=dropped,
                )
            )
        return results
