"""snapfaas: a self-hosted, Lambda-compatible platform for Python functions with SnapStart."""

__version__ = "0.1.0"
