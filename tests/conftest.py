import sys
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # weights_fetch.py lives at the top level
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/tiny.py

from draws import PROFILE  # noqa: E402  (tests/draws.py registers the ci, dev and deep profiles)

settings.load_profile(PROFILE)


@pytest.fixture(scope="session")
def real_model_dir():
    """The default model (SmolLM2-135M-Instruct), fetched once by weights_fetch.py into MINISINK_HOME."""
    import weights_fetch

    return weights_fetch.fetch(progress=False)


@pytest.fixture(scope="session")
def real_model(real_model_dir):
    import minisink

    return minisink.load_model(real_model_dir)


@pytest.fixture(scope="session")
def real_tokenizer(real_model_dir):
    import minisink

    return minisink.load_tokenizer(real_model_dir)
