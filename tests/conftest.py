import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # weights_fetch.py lives at the top level
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/tiny.py

# CI runs a fixed, derandomized profile; a failure prints the example and the seed to reproduce it.
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=25, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


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
