"""Test-session settings that must exist before torch is imported."""

import os

# libgomp's threads spin while waiting by default; beside Label Studio, gunicorn and RQ workers started by the
# tests on a small CPU, spinning made forward passes several times slower. Passive waits yield the core.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
