import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AUDIOADV_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real recordings folder (../shared/data); tests using it skip where it is absent."""
    if not (SHARED / "fsdd").is_dir():
        pytest.skip(f"real recordings not found at {SHARED} (only present in the project's workspace)")
    return SHARED


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The suite's models are tiny: one thread avoids oversubscription stalls on small (2-core) machines."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory):
    """A private $AUDIOADV_CACHE folder for one test module's synthesised datasets."""
    root = tmp_path_factory.mktemp("audioadv-cache")
    old = os.environ.get("AUDIOADV_CACHE")
    os.environ["AUDIOADV_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("AUDIOADV_CACHE", None)
    else:
        os.environ["AUDIOADV_CACHE"] = old
