"""What every stage stands on: config, table schemas and access, Spark and Ray plumbing,
logs, locks, errors, and the bundled-model resolver.

Nothing here imports a stage (tests/test_layout.py checks it): stages import plumbing,
plumbing imports libraries (adapters/, encoders/, factors/, jobs/llm/), never back.
"""
