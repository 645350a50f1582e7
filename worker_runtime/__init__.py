"""workerfleet's worker runtime: at-least-once background jobs on Redis.

Application code imports this package to declare tasks and enqueue jobs; every worker pod runs
it. It knows nothing of Kubernetes or of the operator.
"""
