"""gunicorn settings for the saler FastAPI backend: uvicorn workers,
recycled after max_requests, and the master's own metrics.

  gunicorn -c examples/saler-fastapi/gunicorn.conf.py [--preload] app:app

Environment: SALER_BIND (127.0.0.1:8000), SALER_WORKERS (4),
SALER_MAX_REQUESTS (3000; 0 never recycles), SHMETRICS_SEGMENT (the segment
shmetricsd serves).  The master registers saler_workers and
saler_worker_restarts_total here, before it forks; with --preload it also
imports the app (every family registered before the fork), without it each
worker imports the app itself.  Either way each worker writes a region of
its own.
"""
import os

import shmetrics

bind = os.environ.get('SALER_BIND', '127.0.0.1:8000')
workers = int(os.environ.get('SALER_WORKERS', '4'))
worker_class = 'uvicorn.workers.UvicornWorker'
max_requests = int(os.environ.get('SALER_MAX_REQUESTS', '3000'))
graceful_timeout = 10
timeout = 30

workers_gauge = shmetrics.Gauge('saler_workers', 'Worker processes running, as the master last counted.',
                                multiprocess_mode='mostrecent')
restarts = shmetrics.Counter('saler_worker_restarts',
                             'Workers replaced by the master: recycled after max requests, or crashed.',
                             ['reason'])
recycled = restarts.labels('recycled')
crashed = restarts.labels('crashed')


def when_ready(server):
    server.log.info('saler-fastapi listening on http://%s', bind)
    workers_gauge.set(server.num_workers)


def worker_exit(server, worker):
    # In the worker, after it stopped serving: a clean exit (max requests
    # reached, or shutdown).  A worker killed by a signal never gets here.
    recycled.inc()


def child_exit(server, worker):
    # In the master, for every worker that exited.  gunicorn does not pass
    # the exit status on, so the master counts as crashed only the workers
    # it aborted itself (no heartbeat within `timeout`); a worker killed by
    # someone else is neither recycled nor counted as crashed here.
    if getattr(worker, 'aborted', False):
        crashed.inc()
    workers_gauge.set(len(server.WORKERS))


def on_exit(server):
    workers_gauge.set(0)
