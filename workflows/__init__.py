"""Orchestration, the store, the command line and the report: the rooms of `workflows/`, top to bottom.

    cli.py        the `sceneprobe` command line; every user error is caught once (`run.exit_status`)
    run.py        `python -m workflows.run` (what `ray job submit` runs): arguments -> pipeline
    demo.py       `sceneprobe demo`: a local Ray head, `ray job submit`, the report's path
    pipeline.py   the run in stage order (generate, controls, label, probe, intervene, report), locally or on Ray
    ray/          the Ray session, the one actor pool, and the thin remote shells of the stages
    report/       the HTML report, the headline findings, the figures, the plan of a run
    stages/       the stages as plain functions, no Ray; each takes its executor
    store/        everything under a run's output location: paths, atomic files, records, the Zarr store, the writer
    config/       the typed run config

A module imports only rooms below its own (and modules of its own room), never up: cli -> run -> pipeline ->
ray / report -> stages -> store -> config (tests/test_imports.py checks every import, late ones included). Outside
`workflows`, it imports `ldm` (models) and `probes` (array math); neither imports `workflows`.
"""
