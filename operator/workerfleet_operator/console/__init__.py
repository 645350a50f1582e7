"""The web console (``workerfleet console``): pools, queues, dead letters, replay and purge.

Modules: :mod:`.app` (pages and routes), :mod:`.security` (authentication, CSRF),
:mod:`.sources` (where pools and queues are read from), :mod:`.cli` (the command).
"""
