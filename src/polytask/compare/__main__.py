"""``python -m polytask.compare JOB.json``: train one isolated sub-run (see
:func:`polytask.compare.run.run_job`)."""

import sys

from polytask.compare.run import run_job

if __name__ == "__main__":
    sys.exit(run_job(sys.argv[1]))
