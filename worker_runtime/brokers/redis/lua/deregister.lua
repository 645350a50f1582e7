#!lua flags=allow-oom
-- deregister: a worker leaves cleanly (not counted as lost).
-- Touches: {wf:Q}:workers (HDEL), {wf:Q}:workers:expiry (ZREM), {wf:Q}:ready:* (XGROUP
--          DELCONSUMER, its pending entries first XCLAIMed to "workerfleet:orphaned"; any job
--          it still held keeps its lease and is reclaimed when it expires).
-- ARGV: worker.
-- Returns: 1 if the worker was registered, else 0.
local worker = ARGV[1]
local had = redis.call('ZREM', K_WEXP, worker)
redis.call('HDEL', K_WORKERS, worker)
consumer_remove(worker)
return had
