"""The operator's I/O shell: Kubernetes client, kopf handlers, queue reads, metrics, process.

``workerfleet operator`` runs :func:`main.run_operator`; ``handlers`` wires kopf's watches to one
``pool.PoolController`` per WorkerPool, whose loop runs ``reconcile`` and ``scaler`` and reports
through ``report``: they drive the pure core (``workerfleet_operator.api``/``manifests``/``plan``/
``autoscaling``) against the API server.
"""

from workerfleet_operator.shell.config import OperatorConfig

__all__ = ["OperatorConfig"]
