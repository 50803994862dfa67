import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Generated and converted datasets go to a per-session folder, never the user's cache."""
    os.environ["STGNN_CACHE"] = str(tmp_path_factory.mktemp("stgnn-cache"))
    yield
