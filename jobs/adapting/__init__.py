"""adapt's own steps, kept beside its recipe (jobs/adapt.py): the bounded, seeded training
sample it reads (`training`), the training and gate its Ray worker runs (`trainer`, the
only one that needs torch) and the export of every entity's vector by Ray Data actors
(`vector_export`). Nothing but adapt imports them.
"""
