"""Runnable stages and their plumbing.

`python jobs/<stage>.py` and `spark-submit jobs/<stage>.py` put this folder first
on sys.path, where our `datasets.py`, `tables.py`, `config.py` ... would shadow
top-level packages of the same name (transformers probes for `datasets`). The
package is always importable as `jobs` from its parent, so the folder itself is
taken off the path the first time the package is imported.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
