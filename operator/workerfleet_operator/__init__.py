"""workerfleet's Kubernetes operator: the WorkerPool API, its reconcile and the autoscaler.

Imported by the `workerfleet` command line and by the tests. The pure core (``api``,
``manifests``, ``autoscaling``, ``plan``) does no I/O; ``shell`` talks to Kubernetes and, through
``worker_runtime``'s read-only stats API, to Redis; ``local`` drives a local-process fleet.
"""
