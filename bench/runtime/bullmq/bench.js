// BullMQ peer for bench/runtime/driver.py: `node bench.js produce|pace|work` (CommonJS; bullmq and
// ioredis come from NODE_PATH = ~/.cache/workerfleet/bench-node/node_modules).
// Same protocol as peers/common.py: the no-op processor counts in memory, a 20 ms timer flushes
// to the stats Redis (BENCH_STATS_URL) bench:done (INCRBY), bench:ts:<pid> (first/last wall-clock seconds) and bench:lat (latencies
// of jobs stamped with `t`) in one MULTI.
// produce: Queue.addBulk 1000 jobs at a time; work: one Worker, concurrency 50 (BENCH_CONCURRENCY
// overrides), removeOnComplete/removeOnFail so finished jobs are deleted like workerfleet's.
'use strict';
const { Queue, Worker } = require('bullmq');
const IORedis = require('ioredis');
const { performance } = require('perf_hooks');

const url = new URL(process.env.BENCH_REDIS_URL || 'redis://127.0.0.1:6379/0');
const connection = { host: url.hostname, port: Number(url.port || 6379), maxRetriesPerRequest: null };
// The counters go to a separate Redis (BENCH_STATS_URL) so the Redis under test sees only BullMQ.
const statsUrl = new URL(process.env.BENCH_STATS_URL || url.href);
const statsConnection = { host: statsUrl.hostname, port: Number(statsUrl.port || 6379), maxRetriesPerRequest: null };
const JOBS = Number(process.env.BENCH_JOBS || 1000);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY || 0) || 50;
const QUEUE = 'bench';
const nowSeconds = () => (performance.timeOrigin + performance.now()) / 1000;

let pending = 0;
let first = null;
let last = 0;
let latencies = [];

function hit(enqueuedAt) {
  const now = nowSeconds();
  pending += 1;
  if (first === null) first = now;
  last = now;
  if (typeof enqueuedAt === 'number') latencies.push(now - enqueuedAt);
}

function startFlusher() {
  const client = new IORedis(statsConnection);
  const key = `bench:ts:${process.pid}`;
  setInterval(async () => {
    if (pending === 0) return;
    const n = pending;
    const lats = latencies;
    pending = 0;
    latencies = [];
    const tx = client.multi().hset(key, 'first', String(first), 'last', String(last));
    if (lats.length) tx.rpush('bench:lat', ...lats.map(String));
    await tx.incrby('bench:done', n).exec();
  }, 20);
}

async function produce() {
  const queue = new Queue(QUEUE, { connection });
  await queue.waitUntilReady();
  const start = performance.now();
  for (let i = 0; i < JOBS; i += 1000) {
    const batch = [];
    for (let j = i; j < Math.min(JOBS, i + 1000); j++) batch.push({ name: 'noop', data: { i: j } });
    await queue.addBulk(batch);
  }
  const seconds = (performance.now() - start) / 1000;
  console.log(JSON.stringify({ enqueued: JOBS, seconds }));
  await queue.close();
}

// p50 / p99 / max (ms) of the paced producer's calls and the jobs per call, as peers/common.py's
// call_stats reports them for the Python pacers.
function callStats(durations, jobs) {
  if (durations.length === 0) return {};
  const ordered = [...durations].sort((a, b) => a - b);
  const pct = (p) => ordered[Math.min(ordered.length - 1, Math.round((p / 100) * (ordered.length - 1)))] * 1000;
  return {
    call_p50_ms: pct(50),
    call_p99_ms: pct(99),
    call_max_ms: ordered[ordered.length - 1] * 1000,
    jobs_per_call: jobs / ordered.length,
  };
}

// A paced open-loop producer (same shape as wf_bench.py pace): every 5 ms one addBulk of the
// jobs due by now, each stamped with the wall-clock time just before the call.
async function pace() {
  const rate = Number(process.env.BENCH_RATE);
  const seconds = Number(process.env.BENCH_SECONDS || 5);
  const total = Math.floor(rate * seconds);
  const queue = new Queue(QUEUE, { connection });
  await queue.waitUntilReady();
  const start = performance.now();
  let sent = 0;
  const durations = []; // seconds per addBulk: each job's latency includes its call
  while (sent < total) {
    const due = Math.min(total, Math.floor(((performance.now() - start) / 1000) * rate) + 1);
    if (due > sent) {
      const t = nowSeconds();
      const batch = [];
      for (let j = sent; j < due; j++) batch.push({ name: 'noop', data: { i: j, t } });
      await queue.addBulk(batch);
      durations.push(nowSeconds() - t);
      sent = due;
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  const elapsed = (performance.now() - start) / 1000;
  console.log(JSON.stringify({ enqueued: sent, seconds: elapsed, rate, ...callStats(durations, sent) }));
  await queue.close();
}

function work() {
  startFlusher();
  const worker = new Worker(QUEUE, async (job) => { hit(job.data.t); }, {
    connection,
    concurrency: CONCURRENCY,
    removeOnComplete: { count: 0 },
    removeOnFail: { count: 0 },
  });
  worker.on('error', (err) => console.error(err));
}

const cmd = process.argv[2];
if (cmd === 'produce') produce().catch((e) => { console.error(e); process.exit(1); });
else if (cmd === 'pace') pace().catch((e) => { console.error(e); process.exit(1); });
else if (cmd === 'work') work();
else { console.error('usage: bench.js produce|pace|work'); process.exit(2); }
