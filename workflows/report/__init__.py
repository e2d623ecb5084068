"""What a person reads: the HTML report of a run (`page`), the headline comparison (`findings`), the figures
(`figures`: SVG charts and PNGs, no plotting library) and the plan of a run before it starts (`plan`).

Room of `workflows`: imports `workflows.stages` (readers of stored results), `workflows.store` and
`workflows.config`; never `workflows.ray`, the pipeline or the command line.
"""
