"""A local Kubernetes cluster for the tests: a real control plane built from Go modules,
process-backed nodes whose pods really run, and KWOK nodes for scheduling at scale."""
