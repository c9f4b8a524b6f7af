"""benign-audit: find mislabelled and atypical examples with natural and robust models.

Public API::

    from audit import RunConfig, run_audit, load_model, load_dataset
"""

__version__ = "0.1.0"

__all__ = ["RunConfig", "__version__", "load_dataset", "load_model", "run_audit"]


def __getattr__(name):  # keep `import audit` light: torch and friends load on first use
    if name == "RunConfig":
        from audit.config import RunConfig

        return RunConfig
    if name == "run_audit":
        from audit.pipeline import run_audit

        return run_audit
    if name == "load_model":
        from audit.models_api import load_model

        return load_model
    if name == "load_dataset":
        from audit.data import load_dataset

        return load_dataset
    raise AttributeError(name)
