"""The small agent on every GPU host: inventory, atomic GPU claims, detached job supervisors, job state on disk.

Standard library only, plus `pynvml` (package nvidia-ml-py) inside the inventory code.
"""
__version__ = "0.1.0"
