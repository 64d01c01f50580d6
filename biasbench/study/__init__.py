"""Studies: a paper's whole experiment in one YAML file, from the grid to the paper's figures.

    schema.py    the study file: reading, validation, expansion into cells (one recipe each)
    naming.py    readable, stable folder names from the keys that vary (`cell_name`)
    manifest.py  DIR/study.json: every cell and run with its status; the lock on DIR
    runner.py    the trainer adapter and the sweep over a backend (local pool or Slurm)
    tune.py      `tune:`: an Optuna search per cell on validation data, before the replicates
    slurm.py     the Slurm backend through submitit (job arrays, requeue, resume)
    cost.py      the --dry-run estimate: FLOPs x samples x epochs per run
    progress.py  the progress display over a whole study (rich on a terminal, plain lines otherwise)
    analysis.py  what the analyses share: the runs read once, one estimate per cell, cell pairing
    analyses/    the analyses the report draws, one file each (table, by_width, failures, pairs, ...)
    report.py    `biasbench report DIR` on a study folder: Markdown, PNG and HTML

Data flows one way: study file -> cells (recipes) -> runner (trainer) -> results files +
manifest -> analysis -> report.
"""

from biasbench.study.schema import Cell, Study, load_study

__all__ = ["Cell", "Study", "load_study"]
