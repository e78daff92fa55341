"""Where the suite finds the checkout (ROOT, read-only) and keeps its one directory
between sessions, outside the checkout (CACHE).

CACHE holds the bundled LLM converted to safetensors (tens of seconds per conversion, so it
persists rather than living in a session's tmp dir) and, when `make test` has not fetched
ML-100K into data/ml-100k, the fetched dataset. KAR_TEST_CACHE moves it. Conversions and
fetches are atomic renames, so sessions of several checkouts can share it.
"""

from __future__ import annotations

import os
from pathlib import Path

# tests/ sits in the checkout's root, however deep a test module is.
ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("KAR_TEST_CACHE") or Path.home() / ".cache" / "kar-tests")
