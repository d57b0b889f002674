"""The session's training run, built in a background process (started by ``pytest_collection_finish`` in
tests/conftest.py under pytest-xdist): ``python tests/build_training_run.py SESSION_FOLDER``."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import matplotlib  # noqa: E402

matplotlib.use("Agg")

from conftest import shared_training_run  # noqa: E402

if __name__ == "__main__":
    print(shared_training_run(Path(sys.argv[1])), flush=True)
