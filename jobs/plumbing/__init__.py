"""What every stage stands on: config, table schemas and access, Spark and Ray plumbing,
logs, locks, errors, and the bundled-model resolver. The rules about what our tables
mean live apart, in jobs/rules/.

Nothing here imports a stage or a rule (tests/test_layout.py checks it): stages import
rules and plumbing, plumbing imports libraries (adapters/, encoders/, factors/,
jobs/llm/), never back.
"""
