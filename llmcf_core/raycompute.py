"""Connecting a job to Ray: the cluster it was submitted to, or a local instance when run by hand."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def without_dashboard_address() -> Iterator[None]:
    """Hide a dashboard URL (``http://...``) in ``RAY_ADDRESS`` from ``ray.init`` meanwhile: it is for
    the Jobs API, and ``ray.init`` refuses it even with ``ignore_reinit_error``."""
    saved = os.environ.get("RAY_ADDRESS")
    hide = bool(saved) and saved.startswith(("http://", "https://"))
    if hide:
        os.environ.pop("RAY_ADDRESS")
    try:
        yield
    finally:
        if hide:
            os.environ["RAY_ADDRESS"] = saved


def ensure_ray(num_cpus: int | None = None, *, dashboard: bool = False) -> None:
    """``ray.init`` once per process.

    Inside a Ray job the supervisor sets ``RAY_ADDRESS`` to the cluster (GCS) address and we join
    it. A dashboard URL (``http://...``, what the Airflow side and tests put in ``RAY_ADDRESS``) is
    for the Jobs API, not for ``ray.init``: then, as when nothing is set, a local instance starts.

    ``dashboard=True`` (Ray Train callers) starts a local instance WITH its dashboard: Ray Train
    2.60's placement-group cleaner asks the State API (served by the dashboard) whether the train
    controller is alive, and on an instance without one concludes "dead" and removes the workers'
    placement group mid-run. Clusters and ``llmcf_core.localray`` heads always have a dashboard;
    Ray Data callers skip it (a faster start, less memory).
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS", "")
    if address.startswith(("http://", "https://")):
        address = ""
    if address:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=True)
        return
    saved = os.environ.pop("RAY_ADDRESS", None)  # empty, or a dashboard URL: start a local instance
    try:
        if dashboard:
            from llmcf_core.localray import free_ports

            ray.init(
                num_cpus=num_cpus,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                dashboard_port=free_ports(1)[0],
                ignore_reinit_error=True,
                log_to_driver=True,
            )
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, ignore_reinit_error=True, log_to_driver=True)
    finally:
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved


@contextlib.contextmanager
def checkpoint_directory(checkpoint, prefix: str = "ckpt-") -> Iterator[str]:
    """A Ray Train checkpoint as a local folder that this process alone reads.

    A local checkpoint is read in place. A remote one is downloaded into a temporary folder of this
    process: Ray's ``as_directory`` shares one temporary folder per node, and a worker that arrives
    after another worker's download finished downloads again over the files that worker is reading
    (a torn file on resume, seen with 2 workers on one node).
    """
    import tempfile

    import pyarrow.fs

    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        yield checkpoint.path
        return
    from llmcf_core import fsio

    fsio.cache_root().mkdir(parents=True, exist_ok=True)  # the pods' cache volume, not /tmp
    with tempfile.TemporaryDirectory(prefix=prefix, dir=fsio.cache_root()) as folder:
        yield checkpoint.to_directory(folder)
