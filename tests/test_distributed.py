"""Where chunked work runs: in-process or on a local Dask cluster."""

import socket

from galcae.distributed import dask_client


def test_a_busy_dashboard_port_does_not_disturb_a_local_cluster():
    """A local cluster starts, without a warning, while another holds the dashboard port 8787."""
    # Another Dask cluster (a notebook's, a second galcae run) may hold it: galcae's scheduler
    # takes a free port.
    with socket.socket() as held:
        try:
            held.bind(("127.0.0.1", 8787))
            held.listen()
        except OSError:
            pass  # taken already: the same situation
        with dask_client(2) as client:
            assert client.submit(sum, [1, 2]).result() == 3


def test_one_worker_runs_in_process():
    """``dask_client(1)`` starts no cluster: the work runs in this process."""
    with dask_client(1) as client:
        assert client is None
