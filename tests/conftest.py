import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network
# Tiny models on 2 shared cores run many times faster on one thread than fighting for two; results stay identical.
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))

import tiny_pipelines  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def sd1_path(tmp_path_factory) -> Path:
    return tiny_pipelines.build_sd1(tmp_path_factory.mktemp("sd1"))


@pytest.fixture(scope="session")
def sd2_path(tmp_path_factory) -> Path:
    return tiny_pipelines.build_sd2(tmp_path_factory.mktemp("sd2"))


@pytest.fixture(scope="session")
def sdxl_path(tmp_path_factory) -> Path:
    return tiny_pipelines.build_sdxl(tmp_path_factory.mktemp("sdxl"))


@pytest.fixture(scope="session")
def sd3_path(tmp_path_factory) -> Path:
    return tiny_pipelines.build_sd3(tmp_path_factory.mktemp("sd3"))


@pytest.fixture(scope="session")
def flux_path(tmp_path_factory) -> Path:
    return tiny_pipelines.build_flux(tmp_path_factory.mktemp("flux"))


@pytest.fixture(scope="session")
def pixart_path(tmp_path_factory) -> Path:
    return tiny_pipelines.build_pixart(tmp_path_factory.mktemp("pixart"))


@pytest.fixture(scope="module")
def control(tmp_path_factory) -> Path:
    """The fault-injection folder of `test_workflows_backend` (its files pause or fail generate() calls)."""
    return tmp_path_factory.mktemp("control")


@pytest.fixture(scope="module")
def cluster(control):
    """A private local Ray for one test module, whose workers see the `control` folder, one torch thread each."""
    import ray

    from test_workflows_backend import CONTROL

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {CONTROL: str(control), "OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


_exit_status: list[int] = []


def pytest_sessionfinish(session, exitstatus) -> None:
    _exit_status.append(int(exitstatus))


def pytest_unconfigure(config) -> None:
    """Leave without interpreter teardown once pytest has reported everything.

    Native threads left by torch, Ray and the Zarr codecs occasionally segfault while CPython tears the interpreter
    down (seen now and then, always after the summary line), which would turn a green run red.
    Every test has finished and been reported by now, so the session's own exit status is the truth."""
    if _exit_status and os.environ.get("SCENEPROBE_TEST_TEARDOWN") != "1":  # =1 keeps the normal teardown
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[0])
