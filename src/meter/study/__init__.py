"""Studies: the paper's ablation tables as one command. A study file (spec.py) expands into cells and runs
(cells.py), which run as worker processes or submitit jobs (execute.py, executors.py, worker.py) and are tabulated
into Markdown, CSV and an HTML page (results.py, report.py, page.py, plots.py); status.py tells where each cell is."""
