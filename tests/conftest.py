"""Shared fixtures: everything runs on CPU, float64 where closed forms are compared."""

import os

# Before anything imports Ray: Ray reads it once, and with it every node a test adds (and every
# local node a driver starts) takes 127.0.0.1 instead of the machine's network address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest  # noqa: E402
import torch

from harness.core.methods import METHODS, build_method


@pytest.fixture(params=METHODS.names())
def method_name(request):
    return request.param


@pytest.fixture
def method(method_name):
    # A modest VE prior keeps the Gaussian tests quick without changing what they check.
    options = {"sigma_max": 5.0} if method_name == "score-matching-ve" else {}
    return build_method(method_name, **options)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def ray_cluster():
    """One multi-node Ray cluster for the whole session (starting Ray costs ~6 s on 2 cores):
    a head with 1 CPU and no GPU, and a worker node with 2 CPUs and 2 fake GPUs."""
    import os

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # tests only: no token under ~/.ray
    import ray
    from ray.cluster_utils import Cluster

    # Loopback only: Ray would otherwise pick the machine's network address for every node.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0,
                                                            "node_ip_address": "127.0.0.1"})
    gpu_node = cluster.add_node(num_cpus=2, num_gpus=2)
    cluster.wait_for_nodes()
    # Ray Train's helpers look a cluster up by address; never let them find another one here.
    os.environ["RAY_ADDRESS"] = cluster.address
    ray.init(address=cluster.address, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    cluster.gpu_node_id = gpu_node.node_id
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory):
    from tests.servers import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture
def one_thread():
    """One intra-op thread, for modules of small nets and solves (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): on shared CPUs threading only costs them time (a
    1 s training took 20 s with two threads on a busy 2-core machine), and one thread is
    deterministic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
