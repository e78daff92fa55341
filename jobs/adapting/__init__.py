"""adapt's own steps, kept beside its recipe (jobs/adapt.py): the bounded, seeded training
sample it reads (`training`) and the export of every entity's vector by Ray Data workers
(`vector_export`). Nothing but adapt imports them.
"""
