"""Amazon SQS (and SQS-compatible servers such as ElasticMQ) as a workerfleet broker.

Imported lazily by ``open_broker`` for ``sqs://`` URLs (needs the ``sqs`` extra: aiobotocore).
:mod:`~worker_runtime.brokers.sqs.broker` maps the broker contract onto SQS,
:mod:`~worker_runtime.brokers.sqs.attributes` is what a message carries besides the job,
:mod:`~worker_runtime.brokers.sqs.settings` parses the URL and names the SQS queues, and
:mod:`~worker_runtime.brokers.sqs.dlq` reads and replays the dead letters.
"""
