"""Built-in tools. Importing this package registers each of them in the global registry."""

from . import calculator, clock, memory, web, workspace

__all__ = ["calculator", "clock", "memory", "web", "workspace"]
