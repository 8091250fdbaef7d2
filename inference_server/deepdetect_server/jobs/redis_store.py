"""The shared, durable job store: Redis, every state change one Lua script (atomic on the server).

Keys, all under one hash tag `{prefix}` so a Redis Cluster keeps them in one slot (scripts touch several):
  {p}:job:<id>       hash: the record (`JobRecord.to_fields`), plus `token`, `idem`
  {p}:payload:<id>   the media bytes, deleted when the job ends
  {p}:queue          list of queued ids (LPUSH in, RPOP out; a released job goes back to the out end)
  {p}:leases         zset id -> lease expiry (ms, Redis clock): a lapsed lease means its replica died
  {p}:callbacks      zset id -> when the next delivery attempt is due
  {p}:idem:<tenant>:<sha256(key)>  "<id>|<body sha256>"
Times come from Redis's own clock (TIME), so replicas with skewed clocks agree on when a lease lapsed.
Final jobs, and their idempotency keys, expire after `result_ttl_s`; queued and running ones never do.
Redis must persist (appendonly) for accepted jobs to survive a restart of Redis itself.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any, cast

from ..errors import Overloaded
from .model import Claim, FinalState, JobRecord, NewJob, Submitted
from .store import Beat, CallbackOutcome, conflict, lost_error, not_cancelable, queue_full

if TYPE_CHECKING:
    from ..redis_link import RedisLink

# Shared Lua: server time, and the one way a job reaches a final state.
_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function now_s()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
local function finalize(p, id, state, result, err, ttl, event_id)
  local job = p .. ':job:' .. id
  local ts = now_s()
  redis.call('HSET', job, 'state', state, 'finished_at', ts, 'updated_at', ts, 'event_id', event_id,
             'token', '')
  if result ~= '' then redis.call('HSET', job, 'result', result) end
  if err ~= '' then redis.call('HSET', job, 'error', err) end
  redis.call('ZREM', p .. ':leases', id)
  redis.call('DEL', p .. ':payload:' .. id)
  redis.call('EXPIRE', job, ttl)
  local idem = redis.call('HGET', job, 'idem')
  if idem and idem ~= '' then redis.call('EXPIRE', idem, ttl) end
  local callback = redis.call('HGET', job, 'callback_url')
  if callback and callback ~= '' then
    redis.call('HSET', job, 'callback_state', 'pending')
    redis.call('ZADD', p .. ':callbacks', now_ms(), id)
  end
end
"""

# KEYS: job, payload, queue, idem ('' = none). ARGV: body sha, max queued, payload, field/value pairs...
_SUBMIT = """
if KEYS[4] ~= '' then
  local seen = redis.call('GET', KEYS[4])
  if seen then
    local bar = string.find(seen, '|', 1, true)
    local id = string.sub(seen, 1, bar - 1)
    if string.sub(seen, bar + 1) ~= ARGV[1] then return {'conflict', id} end
    return {'existing', id}
  end
end
if redis.call('LLEN', KEYS[3]) >= tonumber(ARGV[2]) then return {'full', ''} end
local ts = now_s()
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], 'created_at', ts, 'updated_at', ts, 'idem', KEYS[4], unpack(fields))
redis.call('SET', KEYS[2], ARGV[3])
local id = redis.call('HGET', KEYS[1], 'id')
redis.call('LPUSH', KEYS[3], id)
if KEYS[4] ~= '' then redis.call('SET', KEYS[4], id .. '|' .. ARGV[1]) end
return {'created', id}
"""

# ARGV: prefix, worker, token, lease ms, max attempts, ttl, event id (for a job given up)
_CLAIM = """
local p = ARGV[1]
local now = now_ms()
while true do
  local id = nil
  local expired = redis.call('ZRANGEBYSCORE', p .. ':leases', '-inf', now, 'LIMIT', 0, 1)
  if #expired > 0 then
    id = expired[1]
    local lost = redis.call('HINCRBY', p .. ':job:' .. id, 'lost', 1)
    if lost >= tonumber(ARGV[5]) then
      finalize(p, id, 'failed', '', ARGV[8], ARGV[6], ARGV[7])
      id = nil
    end
  else
    local next_id = redis.call('RPOP', p .. ':queue')
    if not next_id then return nil end
    if redis.call('HGET', p .. ':job:' .. next_id, 'state') == 'queued' then id = next_id end
  end
  if id then
    local job = p .. ':job:' .. id
    local ts = now_s()
    redis.call('HSET', job, 'state', 'running', 'worker', ARGV[2], 'token', ARGV[3], 'started_at', ts,
               'updated_at', ts)
    redis.call('HINCRBY', job, 'attempts', 1)
    redis.call('ZADD', p .. ':leases', now + tonumber(ARGV[4]), id)
    return {redis.call('GET', p .. ':payload:' .. id) or '', redis.call('HGETALL', job)}
  end
end
"""

# KEYS: job, leases. ARGV: id, token, lease ms
_HEARTBEAT = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'running' and redis.call('HGET', KEYS[1], 'token') == ARGV[2] then
  redis.call('ZADD', KEYS[2], 'XX', now_ms() + tonumber(ARGV[3]), ARGV[1])
  return 'ok'
end
if state == 'canceled' then return 'canceled' end
return 'lost'
"""

# KEYS: job. ARGV: prefix, id, token, state, result json, error json, ttl, event id
_FINISH = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' or redis.call('HGET', KEYS[1], 'token') ~= ARGV[3] then
  return 0
end
finalize(ARGV[1], ARGV[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
return 1
"""

# KEYS: job, queue. ARGV: prefix, id, tenant, ttl, event id
_CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or redis.call('HGET', KEYS[1], 'tenant') ~= ARGV[3] then return 'missing' end
if state ~= 'queued' and state ~= 'running' then return 'final' end
if state == 'queued' then redis.call('LREM', KEYS[2], 0, ARGV[2]) end
finalize(ARGV[1], ARGV[2], 'canceled', '', '', ARGV[4], ARGV[5])
return 'canceled'
"""

# KEYS: job, leases, queue. ARGV: id, token
_RELEASE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' or redis.call('HGET', KEYS[1], 'token') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'queued', 'worker', '', 'token', '', 'updated_at', now_s())
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[1])
return 1
"""

# KEYS: callbacks. ARGV: prefix, lease ms
_CLAIM_CALLBACK = """
local now = now_ms()
while true do
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1)
  if #due == 0 then return nil end
  local fields = redis.call('HGETALL', ARGV[1] .. ':job:' .. due[1])
  if #fields == 0 then
    redis.call('ZREM', KEYS[1], due[1])  -- the job expired meanwhile
  else
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), due[1])
    return fields
  end
end
"""

# KEYS: job, callbacks. ARGV: id, outcome, error, retry ms
_CALLBACK_RESULT = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[1]) return 0 end
redis.call('HINCRBY', KEYS[1], 'callback_attempts', 1)
redis.call('HSET', KEYS[1], 'callback_error', ARGV[3])
if ARGV[2] == 'retry' then
  redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[4]), ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[1], 'callback_state', ARGV[2])
end
return 1
"""

_INTERNAL = ("token", "idem")


def _decode(fields: Any) -> dict[str, str]:
    """A hash as HGETALL returns it (a dict, or a flat list from a script), decoded, internals dropped."""
    if isinstance(fields, list):
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    out = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
           for k, v in fields.items()}
    return {k: v for k, v in out.items() if k not in _INTERNAL}


class RedisJobStore:
    kind = "redis"
    durable = True

    def __init__(self, link: RedisLink, prefix: str, result_ttl_s: float, max_queued: int,
                 max_attempts: int) -> None:
        self.link = link
        self.p = "{" + prefix + "}"
        self.ttl = max(1, int(result_ttl_s))
        self.max_queued = max_queued
        self.max_attempts = max_attempts
        client = link.client
        self._submit = client.register_script(_PRELUDE + _SUBMIT)
        self._claim = client.register_script(_PRELUDE + _CLAIM)
        self._heartbeat = client.register_script(_PRELUDE + _HEARTBEAT)
        self._finish = client.register_script(_PRELUDE + _FINISH)
        self._cancel = client.register_script(_PRELUDE + _CANCEL)
        self._release = client.register_script(_PRELUDE + _RELEASE)
        self._claim_callback = client.register_script(_PRELUDE + _CLAIM_CALLBACK)
        self._callback_result = client.register_script(_PRELUDE + _CALLBACK_RESULT)

    def _job(self, job_id: str) -> str:
        return f"{self.p}:job:{job_id}"

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        return await self.link.call("jobs", lambda _: script(keys=keys, args=args))

    async def submit(self, new: NewJob) -> Submitted:
        record = JobRecord(id=new.id, tenant=new.tenant, state="queued", created_at=0.0, updated_at=0.0,
                           params=new.params, callback_url=new.callback_url, size=len(new.payload))
        fields = record.to_fields()
        for stamped in ("created_at", "updated_at"):
            del fields[stamped]  # the script stamps them with Redis's clock
        idem = f"{self.p}:idem:{new.tenant}:{new.idempotency_key}" if new.idempotency_key else ""
        flat = [x for kv in fields.items() for x in kv]
        outcome, job_id = await self._run(
            self._submit, [self._job(new.id), f"{self.p}:payload:{new.id}", f"{self.p}:queue", idem],
            [new.body_sha256, self.max_queued, new.payload, *flat])
        outcome, job_id = outcome.decode(), job_id.decode()
        if outcome == "conflict":
            raise conflict(job_id)
        if outcome == "full":
            raise queue_full(self.max_queued)
        job = await self.get(job_id, new.tenant)
        if job is None:  # an idempotent replay of a job that expired between the two calls
            raise Overloaded("the job expired while being read back: retry")
        return Submitted(job, created=outcome == "created")

    async def get(self, job_id: str, tenant: str) -> JobRecord | None:
        fields = await self.link.call("jobs", lambda r: r.hgetall(self._job(job_id)))
        if not fields:
            return None
        job = JobRecord.from_fields(_decode(fields))
        return job if job.tenant == tenant else None

    async def cancel(self, job_id: str, tenant: str) -> JobRecord | None:
        outcome = (await self._run(self._cancel, [self._job(job_id), f"{self.p}:queue"],
                                   [self.p, job_id, tenant, self.ttl, uuid.uuid4().hex])).decode()
        if outcome == "missing":
            return None
        job = await self.get(job_id, tenant)
        if job is None:
            return None
        if outcome != "canceled":
            raise not_cancelable(job)
        return job

    async def claim(self, worker: str, lease_s: float) -> Claim | None:
        token = uuid.uuid4().hex
        reply = await self._run(self._claim, [f"{self.p}:queue", f"{self.p}:leases"], [
            self.p, worker, token, int(lease_s * 1000), self.max_attempts, self.ttl, uuid.uuid4().hex,
            json.dumps(lost_error(self.max_attempts))])
        if reply is None:
            return None
        payload, fields = reply
        return Claim(JobRecord.from_fields(_decode(fields)), bytes(payload), token)

    async def heartbeat(self, claim: Claim, lease_s: float) -> Beat:
        reply = await self._run(self._heartbeat, [self._job(claim.job.id), f"{self.p}:leases"],
                                [claim.job.id, claim.token, int(lease_s * 1000)])
        return cast(Beat, reply.decode())

    async def finish(self, claim: Claim, state: FinalState, result: dict[str, Any] | None = None,
                     error: dict[str, Any] | None = None) -> bool:
        done = await self._run(self._finish, [self._job(claim.job.id)], [
            self.p, claim.job.id, claim.token, state, json.dumps(result) if result is not None else "",
            json.dumps(error) if error is not None else "", self.ttl, uuid.uuid4().hex])
        return bool(done)

    async def release(self, claim: Claim) -> bool:
        keys = [self._job(claim.job.id), f"{self.p}:leases", f"{self.p}:queue"]
        done = await self._run(self._release, keys, [claim.job.id, claim.token])
        return bool(done)

    async def depth(self) -> dict[str, int]:
        async def both(r: Any) -> dict[str, int]:
            async with r.pipeline(transaction=False) as pipe:
                queued, running = await pipe.llen(f"{self.p}:queue").zcard(f"{self.p}:leases").execute()
            return {"queued": int(queued), "running": int(running)}

        return await self.link.call("jobs", both)

    async def claim_callback(self, lease_s: float) -> JobRecord | None:
        fields = await self._run(self._claim_callback, [f"{self.p}:callbacks"], [self.p, int(lease_s * 1000)])
        return JobRecord.from_fields(_decode(fields)) if fields else None

    async def callback_result(self, job_id: str, outcome: CallbackOutcome, error: str = "",
                              retry_in_s: float = 0.0) -> None:
        await self._run(self._callback_result, [self._job(job_id), f"{self.p}:callbacks"],
                        [job_id, outcome, error, int(retry_in_s * 1000)])

    async def ping(self) -> None:
        await self.link.call("jobs", lambda r: r.ping())

    async def close(self) -> None:
        return None  # the link is shared; its owner closes it

