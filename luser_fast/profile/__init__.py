"""Training-memory and throughput measurement (see ``memory.py`` for how it is measured)."""
from .memory import LiveTensorBytes, MemoryReport, SavedTensorBytes, mse, training_memory

__all__ = ["training_memory", "MemoryReport", "SavedTensorBytes", "LiveTensorBytes", "mse"]
