-- KEYS: queue:domains, leases, events
-- ARGV: (positions from mailrelay.store.scripts.RECORD_ARGV) owner, now_ms,
--       msg key prefix, timeline key prefix, domain queue prefix, status index prefix, minute
--       and hour counter prefixes, then per job 6 values: job, rcpt index, new state, event
--       JSON, due_ms ("" if final), domain
-- States: deferred (rescheduled at due_ms), delivered, bounced, expired, suppressed (final).
-- Returns one result per job, in order: OK, STOLEN (another daemon held the lease; recorded
-- anyway) or GONE (the message was deleted; nothing recorded).
--#include _domain_min
--#include _status
--#include _count

local owner_arg, now = ARGV[${record.owner}], ARGV[${record.now_ms}]
local msg_prefix, timeline_prefix = ARGV[${record.msg_prefix}], ARGV[${record.timeline_prefix}]
local queue_prefix, status_prefix = ARGV[${record.domain_queue_prefix}], ARGV[${record.status_index_prefix}]
local minute_prefix, hour_prefix = ARGV[${record.stats_minute_prefix}], ARGV[${record.stats_hour_prefix}]
local results = {}
local touched, touched_order = {}, {}
local counts, count_order = {}, {}
local requeued, requeued_order = {}, {}
for pos = ${record.#} + 1, #ARGV, 6 do
  local job, i, state, event, due, domain = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 3], ARGV[pos + 4], ARGV[pos + 5]
  local dot = string.find(job, '.', 1, true)
  local id = string.sub(job, 1, dot - 1)
  local mkey = msg_prefix .. id
  local owner = redis.call('HGET', mkey, 'owner:' .. i)
  redis.call('ZREM', KEYS[2], job)
  if not owner and (redis.call('EXISTS', mkey) == 0 or redis.call('HGET', mkey, 'state:' .. i) == 'deleted') then
    results[#results + 1] = 'GONE'
  else
    redis.call('HDEL', mkey, 'owner:' .. i)
    redis.call('HSET', mkey, 'state:' .. i, state, 'last:' .. i, now)
    redis.call('HINCRBY', mkey, 'attempts:' .. i, 1)
    redis.call('RPUSH', timeline_prefix .. id, event)
    redis.call('XADD', KEYS[3], '*', 'type', state, 'msg', id, 'rcpt', i, 'at', now)
    if not touched[id] then
      touched[id] = true
      touched_order[#touched_order + 1] = id
    end
    if not counts[state] then
      counts[state] = 0
      count_order[#count_order + 1] = state
    end
    counts[state] = counts[state] + 1
    if due ~= '' then
      local dkey = queue_prefix .. domain
      redis.call('ZADD', dkey, tonumber(due), job)
      if not requeued[domain] then
        requeued[domain] = true
        requeued_order[#requeued_order + 1] = domain
      end
    end
    if owner and owner ~= owner_arg then
      results[#results + 1] = 'STOLEN'
    else
      results[#results + 1] = 'OK'
    end
  end
end
for _, id in ipairs(touched_order) do
  update_status(msg_prefix .. id, id, status_prefix)
end
for _, state in ipairs(count_order) do
  count(minute_prefix, hour_prefix, tonumber(now), state, counts[state])
end
for _, domain in ipairs(requeued_order) do
  update_domain(KEYS[1], queue_prefix .. domain, domain)
end
return results
