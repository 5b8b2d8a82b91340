"""Where the controller's actions land: local Ray actors, or Kubernetes objects."""

from .base import Backend

__all__ = ["Backend"]
