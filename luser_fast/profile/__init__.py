"""Measurement: training memory and throughput (``memory.py``, exported here), and the
modules built on it, imported by name:

* ``memprofile``: ``luser-fast memprofile``, training memory against one setting;
* ``harness``: how benchmark and demo runs are recorded (machine, versions, git SHA, timings);
* ``bench``: ``luser-fast bench``, the runner of the checkout's ``bench/`` suites;
* ``provenance``: CPU model and git SHA.
"""
from .memory import (LiveTensorBytes, MemoryReport, ResidentPeak, SavedTensorBytes, mse,
                     training_memory)

__all__ = ["training_memory", "MemoryReport", "SavedTensorBytes", "LiveTensorBytes",
           "ResidentPeak", "mse"]
