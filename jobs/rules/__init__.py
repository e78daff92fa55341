"""Rules about the job's own tables, apart from the infrastructure that stores them
(jobs/plumbing/): which answer is an entity's current knowledge (`knowledge`), which
vectors version is live and what it holds (`vectors`), and how CTR samples and vectors
become training tensors (`ctr`).

Stages import these; they import plumbing and libraries, never a stage.
"""
