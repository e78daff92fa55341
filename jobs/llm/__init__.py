"""LLM engines behind one small interface: prompts in, answers with token accounting out.

Engines load a local checkpoint directory; jobs/models.py resolves llm.model to one.
"""

from jobs.llm.base import Engine, Generation
from jobs.llm.checkpoint import special_tokens
from jobs.llm.engines import build_engine

__all__ = ["Engine", "Generation", "build_engine", "special_tokens"]
