"""Connecting a job to Ray: the cluster it was submitted to, or a local instance when run by hand."""

from __future__ import annotations

import os


def ensure_ray(num_cpus: int | None = None) -> None:
    """``ray.init`` once per process.

    Inside a Ray job the supervisor sets ``RAY_ADDRESS`` to the cluster (GCS) address and we join
    it. A dashboard URL (``http://...``, what the Airflow side and tests put in ``RAY_ADDRESS``) is
    for the Jobs API, not for ``ray.init``: then, as when nothing is set, a local instance starts.
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
    saved = os.environ.pop("RAY_ADDRESS", None)
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False, ignore_reinit_error=True, log_to_driver=True)
    finally:
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved
