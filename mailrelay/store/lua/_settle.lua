-- KEYS: none of its own (a shared piece: scripts --#include it)
-- ARGV: none of its own; defines settle_names(keys, argv, a) and settle(names, owner, action,
--       id, now); needs _count
-- Shared Lua: settling a message stored "unsettled" by the enqueue script. 'confirm' (its 250
-- was sent, or its daemon is gone: see sweep_unsettled.lua) puts its jobs in their domain
-- queues, due now; 'cancel' (its client got 451) deletes it, its body, timeline and index
-- entries, takes it out of the counters and adds a 'cancelled' event. Only the daemon that
-- stored it (owner) may cancel it; owner '' confirms anyone's. Returns CONFIRMED, CANCELLED,
-- SETTLED (settled before: a cancel came too late, the message is delivered), GONE (no such
-- message: never stored, e.g. refused as late) or OTHER (stored by another daemon).
-- The key names settle() uses come from the including script: its first KEYS are
-- mailrelay.store.scripts.SETTLE_KEYS, and its ARGV from position a on SETTLE_ARGV;
-- settle_names() gathers them once per call of the script.
--#include _unindex
local function settle_names(keys, argv, a)
  a = a - 1
  return {
    unsettled = keys[${settle_keys.unsettled}],
    queue_domains = keys[${settle_keys.queue_domains}],
    time_index = keys[${settle_keys.time_index}],
    events = keys[${settle_keys.events}],
    msg = argv[a + ${settle_argv.msg_prefix}],
    body = argv[a + ${settle_argv.body_prefix}],
    timeline = argv[a + ${settle_argv.timeline_prefix}],
    domain_queue = argv[a + ${settle_argv.domain_queue_prefix}],
    rcpt_index = argv[a + ${settle_argv.rcpt_index_prefix}],
    tag_index = argv[a + ${settle_argv.tag_index_prefix}],
    status_index = argv[a + ${settle_argv.status_index_prefix}],
    stats_minute = argv[a + ${settle_argv.stats_minute_prefix}],
    stats_hour = argv[a + ${settle_argv.stats_hour_prefix}],
  }
end
local function settle(K, owner, action, id, now)
  local mkey = K.msg .. id
  local ukey = K.unsettled
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
        redis.call('ZADD', K.domain_queue .. domain, now, id .. '.' .. i)
        domains[domain] = true
      end
    end
    for domain in pairs(domains) do
      redis.call('ZADD', K.queue_domains, 'LT', now, domain)
    end
    return 'CONFIRMED'
  end
  local received = tonumber(redis.call('HGET', mkey, 'received_at')) or now
  unindex_message(mkey, id, K.time_index, K.rcpt_index, K.tag_index, K.status_index)
  redis.call('DEL', mkey, K.body .. id, K.timeline .. id)
  count(K.stats_minute, K.stats_hour, received, 'accepted', -1)
  count(K.stats_minute, K.stats_hour, received, 'recipients', -n)
  count(K.stats_minute, K.stats_hour, now, 'cancelled', 1)
  redis.call('XADD', K.events, '*', 'type', 'cancelled', 'msg', id, 'at', now)
  return 'CANCELLED'
end
