"""Where the work runs: this process (local) or a Ray cluster. One :class:`~covidct_core.run_settings.EngineSettings`
per command.

Nothing here changes a number: the ray engine computes the same features (same content keys,
same cache) and fit chooses the same parameters as the local one. Ray is an optional extra
(``pip install -e ".[ray]"``); without it, asking for it is one clear error.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from covidct_core.run_settings import EngineError, EngineSettings

# Environment the Ray workers need to compute what this process would.
_FORWARDED_ENV = ("KERAS_BACKEND", "KERAS_HOME", "COVIDCT_OFFLINE", "COVIDCT_RUNTIME", "TF_CPP_MIN_LOG_LEVEL")


def import_ray():
    """The ray module, or one clear EngineError."""
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library comes with the ray[data] extra)
    except ImportError as exc:
        raise EngineError(f"--engine ray needs Ray Data, which is not installed here ({exc.name}): "
                          'pip install -e ".[ray]"') from None
    return ray


@contextlib.contextmanager
def ray_session(settings: EngineSettings) -> Iterator:
    """Connected to the cluster (or a local Ray started for this command) while inside."""
    ray = import_ray()
    if ray.is_initialized():  # a caller (a notebook, a test) manages Ray itself
        yield ray
        return
    env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if settings.ray_address is None:  # workers on this machine import the package from here
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    try:
        # Ray's own start-up warnings only with --verbose; errors always.
        quiet = not logging.getLogger("feature_extractor").isEnabledFor(logging.INFO)
        logging.getLogger("ray.data").setLevel(logging.ERROR if quiet else logging.INFO)
        ray.init(address=settings.ray_address, runtime_env={"env_vars": env}, include_dashboard=False,
                 logging_level=logging.ERROR if quiet else logging.INFO, log_to_driver=not quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = settings.ray_address or "a local Ray"
        raise EngineError(f"cannot start or reach {where}: {str(exc).splitlines()[0]}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def joblib_engine(settings: EngineSettings) -> Iterator[None]:
    """joblib's parallel calls (the grouped-CV fits of tuning) fan out over this machine's cores
    (local: joblib's process pool, one task per core) or over Ray with --engine ray. Each fit is
    the same either way: the results do not depend on how many run at once."""
    import joblib

    if not settings.is_ray:
        with joblib.parallel_config(n_jobs=max(1, os.cpu_count() or 1)):
            yield
        return
    with ray_session(settings) as ray:
        from ray.util.joblib import register_ray

        register_ray()
        n_jobs = settings.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        with joblib.parallel_config(backend="ray", n_jobs=n_jobs):
            yield
