import os
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import zoo  # noqa: E402


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory):
    """Exports are cached per session (or in $ONNXPRUNE_ZOO_CACHE, to reuse across runs)."""
    cache = os.environ.get("ONNXPRUNE_ZOO_CACHE")
    return pathlib.Path(cache) if cache else tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="session")
def zoo_models(zoo_dir):
    return zoo.build_zoo(zoo_dir)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Test models are tiny: torch's thread pool only costs time (a lot of it on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
