"""Ray: the one session (`session`), the one actor pool (`pool`: retries on another actor, restarts, broken actors),
and thin remote shells over the stages' plain functions (`generate`, `interventions`, `tasks` for labels and the probe
grid). Each shell is an executor that the pipeline passes into a stage.

Room of `workflows`: imports `workflows.stages`, `workflows.store` and `workflows.config`; never the report, the
pipeline or the command line.
"""
