"""saler, the sales backend of examples/saler-demo, in FastAPI: the same routes,
answers and saler_ metric families, written with the shmetrics Python module
into the segment shmetricsd serves.  Run by gunicorn with uvicorn workers
(gunicorn.conf.py beside this file; `make run-python`).

State lives in each worker's memory, as in the C demo: leads (ids carry the
worker's pid), sessions, a leads cache and a feature-flag cache; a recycled
worker takes them with it, and its gauges leave the sums with it.

Environment: SALER_RATE_LIMIT (requests/s per client and worker, default 5;
0 turns it off), SALER_BURST (10), SALER_FAIL_RATE (0.02: conversions whose
payment fails with 500), SALER_SESSION_TTL (300 s), SALER_POOL_SIZE (4).
"""
import asyncio
import itertools
import os
import random
import re
import secrets
import time
import urllib.parse

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import shmetrics
from shmetrics.asgi import AppMetrics, MetricsMiddleware, route_template

RATE_LIMIT = float(os.environ.get('SALER_RATE_LIMIT', '5'))
BURST = float(os.environ.get('SALER_BURST', '10'))
FAIL_RATE = float(os.environ.get('SALER_FAIL_RATE', '0.02'))
SESSION_TTL = float(os.environ.get('SALER_SESSION_TTL', '300'))
POOL_SIZE = int(os.environ.get('SALER_POOL_SIZE', '4'))
MAX_BODY = 16 * 1024
FEATURE_TTL = 5.0

SOURCES = ('web', 'referral', 'ads', 'event', 'partner', 'other')
PLANS = ('basic', 'pro', 'enterprise')
CURRENCIES = ('USD', 'EUR', 'GBP')
FEATURES = ('search', 'export', 'reports', 'dashboard', 'import', 'api')
STAGES = ('new', 'qualified', 'converted')
USERS = {'alice': 'wonderland', 'bob': 'builder', 'carol': 's3cret', 'dave': 'letmein'}
LOCKED = {'dave'}
SQLI = re.compile(r"('\s*or\s+\d+\s*=\s*\d+)|(union\s+select)|(;\s*drop\s+table)|('\s*--)", re.I)

# ---- metrics: registered at import, so with gunicorn --preload in the master
# before it forks (the children inherit every handle), without it in each worker.
backend = AppMetrics('saler')
leads_created = shmetrics.Counter('saler_leads_created', 'Leads created, by source.', ['source'])
leads_qualified = shmetrics.Counter('saler_leads_qualified', 'Leads qualified.')
leads_converted = shmetrics.Counter('saler_leads_converted', 'Leads converted, by plan.', ['plan'])
revenue = shmetrics.Counter('saler_revenue', 'Revenue booked by lead conversions, in units of the currency.',
                            ['currency'])
leads_in_stage = shmetrics.Gauge('saler_leads_in_stage', 'Leads held by the live workers, by pipeline stage.',
                                 ['stage'], multiprocess_mode='livesum')
sessions_started = shmetrics.Counter('saler_sessions_started', 'Sessions started by a login.')
sessions_active = shmetrics.Gauge('saler_sessions_active',
                                  'Sessions not yet expired or logged out (summed over workers).',
                                  multiprocess_mode='livesum')
feature_usage = shmetrics.Counter('saler_feature_usage', 'Uses of product features.', ['feature'])
login_attempts = shmetrics.Counter('saler_login_attempts', 'Login attempts, by outcome (success or failure).',
                                   ['outcome'])
login_failures = shmetrics.Counter('saler_login_failures',
                                   'Failed logins, by reason (unknown_user, bad_password, locked).', ['reason'])
pool = shmetrics.Gauge('saler_db_pool_connections',
                       'Database pool connections by state (in_use or idle), summed over workers.', ['state'],
                       multiprocess_mode='livesum')
pool_max = shmetrics.Gauge('saler_db_pool_max_connections',
                           "Configured size of one worker's database pool (max over workers).",
                           multiprocess_mode='livemax')
# Every series with known labels exists (as 0) before the first request.
for _s in SOURCES:
    leads_created.labels(_s)
for _p in PLANS:
    leads_converted.labels(_p)
for _c in CURRENCIES:
    revenue.labels(_c)
for _f in FEATURES:
    feature_usage.labels(_f)
for _o in ('success', 'failure'):
    login_attempts.labels(_o)
for _r in ('unknown_user', 'bad_password', 'locked'):
    login_failures.labels(_r)
for _k in ('path_traversal', 'sql_injection', 'oversized', 'malformed'):
    backend.suspicious.labels(_k)
for _op in ('select', 'insert', 'update'):
    backend.db_duration.labels(_op)
    backend.db_queries.labels(_op, 'ok')
    backend.db_queries.labels(_op, 'error')
for _cache in ('leads', 'features'):
    backend.cache.labels(_cache, 'hit')
    backend.cache.labels(_cache, 'miss')


class DatabaseError(Exception):
    pass


class Worker:
    """One worker's state, made lazily in the worker (never in a preloading
    master, whose pid and pool would be wrong)."""

    def __init__(self):
        self.pid = os.getpid()
        self.ids = itertools.count(1)
        self.leads = {}      # id -> {'id', 'source', 'stage', ...}
        self.sessions = {}   # sid -> (user, expires)
        self.lead_cache = {}  # id -> lead, at most 64 entries
        self.features = {}   # name -> loaded at
        self.buckets = {}    # client -> (tokens, last)
        self.pool = asyncio.Semaphore(POOL_SIZE)
        self.in_use = 0
        pool.labels('idle').set(POOL_SIZE)
        pool.labels('in_use').set(0)
        pool_max.set(POOL_SIZE)

    async def query(self, op, seconds=None, fail=False):
        """A simulated query: a pool connection, a wait like a round trip."""
        async with self.pool:
            self.in_use += 1
            pool.labels('in_use').inc()
            pool.labels('idle').dec()
            try:
                with backend.db_query(op):
                    await asyncio.sleep(seconds if seconds is not None else random.uniform(0.0001, 0.0012))
                    if fail:
                        raise DatabaseError('connection reset by peer')
            finally:
                self.in_use -= 1
                pool.labels('in_use').dec()
                pool.labels('idle').inc()

    def expire_sessions(self, now):
        for sid, (_, expires) in list(self.sessions.items()):
            if expires <= now:
                del self.sessions[sid]
                sessions_active.dec()

    def allow(self, client, now):
        tokens, last = self.buckets.get(client, (BURST, now))
        tokens = min(BURST, tokens + (now - last) * RATE_LIMIT)
        ok = tokens >= 1
        self.buckets[client] = (tokens - 1 if ok else tokens, now)
        if len(self.buckets) > 10000:
            self.buckets.clear()
        return ok


_worker = None


def worker():
    global _worker
    if _worker is None or _worker.pid != os.getpid():
        _worker = Worker()
    return _worker


def fail(status, error):
    return JSONResponse({'error': error}, status_code=status)


class Guard:
    """Before any handler (inside the metrics middleware, so what it refuses
    is counted): path traversal and SQL injection are 400, a body over 16 KiB
    is 413, a client over its rate is 429 (never /health)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return await self.app(scope, receive, send)
        raw = scope.get('raw_path') or scope['path'].encode()
        path = urllib.parse.unquote(raw.decode('latin-1'))
        query = urllib.parse.unquote_plus(scope.get('query_string', b'').decode('latin-1'))
        headers = dict(scope.get('headers') or ())
        answer = None
        if '..' in path:
            backend.security_event('path_traversal')
            answer = fail(400, 'path traversal')
        elif SQLI.search(query):
            backend.security_event('sql_injection')
            answer = fail(400, 'suspicious query')
        else:
            try:
                length = int(headers.get(b'content-length', b'0'))
            except ValueError:
                length = -1
            if length < 0:
                backend.security_event('malformed')
                answer = fail(400, 'bad Content-Length')
            elif length > MAX_BODY:
                backend.security_event('oversized')
                answer = fail(413, 'body larger than 16 KiB')
            elif RATE_LIMIT > 0 and scope['path'] != '/health':
                fwd = headers.get(b'x-forwarded-for', b'').decode('latin-1').split(',')[0].strip()
                client = fwd or (scope.get('client') or ('?',))[0]
                if not worker().allow(client, time.monotonic()):
                    backend.rate_limit(route_template(scope))
                    answer = JSONResponse({'error': 'rate limited'}, status_code=429, headers={'Retry-After': '1'})
        if answer is not None:
            return await answer(scope, receive, send)
        return await self.app(scope, receive, send)


app = FastAPI(title='saler', docs_url=None, redoc_url=None, openapi_url=None)
app.add_middleware(Guard)
app.add_middleware(MetricsMiddleware, namespace='saler')  # added last: outermost, sees every answer


async def form(request):
    return {k: v[0] for k, v in urllib.parse.parse_qs((await request.body()).decode('utf-8', 'replace')).items()}


def session_of(request, now):
    w = worker()
    w.expire_sessions(now)
    sid = request.cookies.get('sid')
    s = w.sessions.get(sid) if sid else None
    return sid if s else None


@app.api_route('/health', methods=['GET', 'HEAD'])
async def health():
    return {'status': 'ok', 'pid': os.getpid()}


@app.post('/login')
async def login(request: Request):
    f = await form(request)
    user, password = f.get('user'), f.get('password')
    if not user or password is None:
        return fail(400, 'user and password are required')
    reason = None
    if user not in USERS:
        reason = 'unknown_user'
    elif user in LOCKED:
        reason = 'locked'
    elif not secrets.compare_digest(USERS[user], password):
        reason = 'bad_password'
    if reason:
        login_attempts.labels('failure').inc()
        login_failures.labels(reason).inc()
        return fail(403 if reason == 'locked' else 401, reason)
    login_attempts.labels('success').inc()
    w, now = worker(), time.monotonic()
    w.expire_sessions(now)
    sid = secrets.token_hex(16)
    w.sessions[sid] = (user, now + SESSION_TTL)
    sessions_started.inc()
    sessions_active.inc()
    resp = JSONResponse({'user': user, 'session_ttl': SESSION_TTL})
    resp.set_cookie('sid', sid, max_age=int(SESSION_TTL), httponly=True)
    return resp


@app.post('/logout')
async def logout(request: Request):
    sid = session_of(request, time.monotonic())
    if not sid:
        return fail(401, 'no live session')
    del worker().sessions[sid]
    sessions_active.dec()
    return {'status': 'logged out'}


@app.get('/leads')
async def list_leads():
    w = worker()
    await w.query('select')
    return {'leads': sorted(w.leads.values(), key=lambda lead: -lead['id'])[:10]}


@app.post('/leads')
async def create_lead(request: Request):
    source = (await form(request)).get('source')
    if source not in SOURCES:
        return fail(400, 'source must be one of ' + ', '.join(SOURCES))
    w = worker()
    await w.query('insert')
    lead_id = (w.pid % 100000) * 1000000 + next(w.ids)
    lead = {'id': lead_id, 'source': source, 'stage': 'new'}
    w.leads[lead_id] = lead
    leads_created.labels(source).inc()
    leads_in_stage.labels('new').inc()
    return JSONResponse(lead, status_code=201, headers={'Location': '/leads/%d' % lead_id})


async def find_lead(w, lead_id):
    """The lead with this id (the route's {id}, a string), or None."""
    if not lead_id.isdigit():
        return None
    lead_id = int(lead_id)
    lead = w.lead_cache.get(lead_id)
    backend.cache_lookup('leads', lead is not None)
    if lead is None:
        await w.query('select')
        lead = w.leads.get(lead_id)
        if lead is not None:
            if len(w.lead_cache) >= 64:
                w.lead_cache.pop(next(iter(w.lead_cache)))
            w.lead_cache[lead_id] = lead
    return lead


async def lead_at(w, lead_id, stage):
    """(lead, None) when the lead exists in this stage, else (None, the 404 or 409)."""
    lead = await find_lead(w, lead_id)
    if not lead:
        return None, fail(404, 'no such lead')
    if lead['stage'] != stage:
        return None, fail(409, 'lead is ' + lead['stage'])
    return lead, None


def move(lead, stage):
    leads_in_stage.labels(lead['stage']).dec()
    leads_in_stage.labels(stage).inc()
    lead['stage'] = stage


@app.api_route('/leads/{id}', methods=['GET', 'HEAD'])
async def get_lead(id: str):  # noqa: A002 (the route template's name, as in the C demo)
    lead = await find_lead(worker(), id)
    return lead if lead else fail(404, 'no such lead')


@app.post('/leads/{id}/qualify')
async def qualify(id: str):  # noqa: A002
    w = worker()
    lead, refused = await lead_at(w, id, 'new')
    if refused:
        return refused
    await w.query('update')
    move(lead, 'qualified')
    leads_qualified.inc()
    return lead


@app.post('/leads/{id}/convert')
async def convert(id: str, request: Request):  # noqa: A002
    f = await form(request)
    plan, currency = f.get('plan'), f.get('currency', 'USD')
    try:
        amount = float(f.get('amount', ''))
    except ValueError:
        amount = -1.0
    if plan not in PLANS or currency not in CURRENCIES or not (0 < amount < 1e9):
        return fail(400, 'plan, amount and currency are required')
    w = worker()
    lead, refused = await lead_at(w, id, 'qualified')
    if refused:
        return refused
    try:
        await w.query('update', fail=random.random() < FAIL_RATE)
    except DatabaseError:
        return fail(500, 'payment failed')
    move(lead, 'converted')
    leads_converted.labels(plan).inc()
    revenue.labels(currency).inc(amount)
    return lead


@app.get('/features/{name}')
async def feature(name: str, request: Request):
    if name not in FEATURES:
        return fail(404, 'no such feature')
    w, now = worker(), time.monotonic()
    loaded = w.features.get(name)
    fresh = loaded is not None and now - loaded < FEATURE_TTL
    backend.cache_lookup('features', fresh)
    if not fresh:
        await w.query('select')
        w.features[name] = now
    sid = session_of(request, now)
    if sid:
        user, _ = w.sessions[sid]
        w.sessions[sid] = (user, now + SESSION_TTL)
    feature_usage.labels(name).inc()
    return {'feature': name, 'enabled': True}


@app.get('/reports/pipeline')
async def report():
    w = worker()
    await w.query('select', seconds=random.uniform(0.04, 0.36))
    stages = {s: 0 for s in STAGES}
    for lead in w.leads.values():
        stages[lead['stage']] += 1
    return {'stages': stages}


@app.get('/boom')
async def boom():
    try:
        await worker().query('select', fail=True)
    except DatabaseError as e:
        return fail(500, str(e))
    return {}
