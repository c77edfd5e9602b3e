import os
import pathlib
import tempfile

import pytest
import torch
import zoo

# No test depends on the speed of the machine: every latency measurement (round_to="auto", latency targets,
# `onnxprune bench`) uses the fake timer of onnxprune.latency.runtime, in this process and in the ones it
# starts. By default it has no width penalty (latency in proportion to MACs, so round_to="auto" keeps the
# counts of round_to=1); the latency tests set their own. Latency tables are cached in a folder of this run,
# never in the user's cache.
os.environ["ONNXPRUNE_TIMER"] = "fake:slow=1"
os.environ["ONNXPRUNE_CACHE_DIR"] = tempfile.mkdtemp(prefix="onnxprune-test-cache-")


@pytest.fixture(scope="session")
def zoo_dir():
    """Exports are made once and kept in models/cache/test-zoo-<hash of the zoo code and versions> (or in
    $ONNXPRUNE_ZOO_CACHE), so every test of a run, and later runs, share them."""
    cache = os.environ.get("ONNXPRUNE_ZOO_CACHE")
    return pathlib.Path(cache) if cache else zoo.default_cache_dir()


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
