-- KEYS: none of its own (a shared piece: scripts --#include it)
-- ARGV: none of its own; defines settle(P, owner, action, id, now, maxlen); needs _count
-- Shared Lua: settling a message stored "unsettled" by the enqueue script. 'confirm' (its 250
-- was sent, or its daemon is gone: see SWEEP_UNSETTLED_SCRIPT) puts its jobs in their domain
-- queues, due now; 'cancel' (its client got 451) deletes it, its body, timeline and index
-- entries, takes it out of the counters and adds a 'cancelled' event. Only the daemon that
-- stored it (owner) may cancel it; owner '' confirms anyone's. Returns CONFIRMED, CANCELLED,
-- SETTLED (settled before: a cancel came too late, the message is delivered), GONE (no such
-- message: never stored, e.g. refused as late) or OTHER (stored by another daemon).
local function settle(P, owner, action, id, now, maxlen)
  local mkey = P .. 'msg:' .. id
  local ukey = P .. 'queue:unsettled'
  local head = redis.call('HMGET', mkey, 'unsettled', 'rcpt_count')
  local holder = head[1]
  if not holder then
    redis.call('ZREM', ukey, id)
    if head[2] then return 'SETTLED' end
    return 'GONE'
  end
  if owner ~= '' and holder ~= owner then return 'OTHER' end
  redis.call('ZREM', ukey, id)
  local n = tonumber(head[2] or '0')
  if action == 'confirm' then
    redis.call('HDEL', mkey, 'unsettled')
    local domains = {}
    for i = 0, n - 1 do
      local row = redis.call('HMGET', mkey, 'rcpt:' .. i, 'state:' .. i)
      if row[1] and row[2] == 'queued' then
        local domain = domain_of(row[1])
        redis.call('ZADD', P .. 'queue:d:' .. domain, now, id .. '.' .. i)
        domains[domain] = true
      end
    end
    for domain in pairs(domains) do
      redis.call('ZADD', P .. 'queue:domains', 'LT', now, domain)
    end
    return 'CONFIRMED'
  end
  local idx = P .. 'idx:'
  local row = redis.call('HMGET', mkey, 'tag', 'status', 'received_at')
  for i = 0, n - 1 do
    local rcpt = redis.call('HGET', mkey, 'rcpt:' .. i)
    if rcpt then redis.call('ZREM', idx .. 'rcpt:' .. string.lower(rcpt), id) end
  end
  redis.call('ZREM', idx .. 'time', id)
  if row[2] then redis.call('ZREM', idx .. 'status:' .. row[2], id) end
  if row[1] and row[1] ~= '' then redis.call('ZREM', idx .. 'tag:' .. row[1], id) end
  redis.call('DEL', mkey, P .. 'body:' .. id, P .. 'timeline:' .. id)
  local received = tonumber(row[3]) or now
  count(idx .. 'stats:', received, 'accepted', -1)
  count(idx .. 'stats:', received, 'recipients', -n)
  count(idx .. 'stats:', now, 'cancelled', 1)
  redis.call('XADD', P .. 'events', 'MAXLEN', '~', maxlen, '*', 'type', 'cancelled', 'msg', id, 'at', now)
  return 'CANCELLED'
end
