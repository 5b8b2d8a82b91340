"""Fixtures every test folder (tests/, e2e/) may use: the local Kubernetes control plane."""

pytest_plugins = ("tests.support.cluster",)
