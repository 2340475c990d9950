"""TEE backends: where and how a job is launched."""

from trustedml.tee._backend import NoTee, TeeBackend, get_backend

__all__ = ["NoTee", "TeeBackend", "get_backend"]
