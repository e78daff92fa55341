"""LLM engines behind one small interface: prompts in, answers with token accounting out.

A library: it imports nothing else from the job and owns its settings (config.py),
which the job's config composes. Engines load a local checkpoint directory;
jobs/plumbing/models.py resolves llm.model to one and imports a plug-in engine's class.
"""

from jobs.llm.base import Engine, Generation
from jobs.llm.checkpoint import special_tokens
from jobs.llm.engines import build_engine

__all__ = ["Engine", "Generation", "build_engine", "special_tokens"]
