"""The stages of a run as plain functions, no Ray: prompts, generate (and its shards), label, the probe grid,
edits, interventions and the moving-object animation. Each takes its executor as an argument (a shard runner, a
label runner, a `fit_many`, a unit runner), defaulting to this process; `workflows.ray` provides Ray's.

Room of `workflows`: imports `workflows.store` and `workflows.config` (and `ldm`, `probes`); never `ray`,
`workflows.ray`, `workflows.report` or the pipeline.
"""
