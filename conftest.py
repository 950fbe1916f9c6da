"""Thin on purpose: everything lives in the quantbench package's pytest plugin."""

pytest_plugins = ["quantbench.plugin"]
