"""LLM engines behind one small interface: prompts in, answers with token accounting out."""

from jobs.llm.base import Engine, Generation
from jobs.llm.engines import build_engine
from jobs.llm.model import ModelError, resolve_model, special_tokens

__all__ = ["Engine", "Generation", "ModelError", "build_engine", "resolve_model", "special_tokens"]
