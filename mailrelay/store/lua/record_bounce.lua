-- KEYS: bounce, bounce_raw, bounces index, unmatched index, suppressed, msg, timeline, events,
--       suppressed:version, the recipient's late reports counter (reports:<id>.<rcpt>)
-- ARGV: bounce id, at_ms, raw, n_fields, field/value pairs..., then (positions from
--       mailrelay.store.scripts.RECORD_BOUNCE_TAIL, counted from there):
--       matched ("1"/""), rcpt index, new state ("" = unchanged), event JSON ("" = none),
--       suppress address ("" = none), suppression JSON, message id, event type,
--       status index prefix, minute and hour counter prefixes, retention (s), unmatched
--       reports kept at most, bounce key prefix ("P bounce:") and raw bounce key prefix
--       ("P bounce:raw:") (the evicted unmatched records and raw messages are deleted),
--       reports stored per recipient at most (more are skipped: the script returns "skipped")
-- A matched report about a message whose keys were released (data version 2: it is archived in
-- PostgreSQL only) is late: the recipient's state and timeline are not in Redis any more, so its
-- stream entry carries what the archive applies instead ('late' 1, the 'event' JSON and the new
-- 'state', see mailrelay.store.archivefeed), and its reports are counted in KEYS[10] (expires
-- after the retention; release_archived.lua carries the message's counts over into it).
--#include _status
--#include _count

local pos = 5
local n = tonumber(ARGV[4])
local fields = {}
local fields_type = nil
for k = 1, n * 2 do
  fields[k] = ARGV[pos]
  if k % 2 == 0 and fields[k - 1] == 'type' then fields_type = ARGV[pos] end
  pos = pos + 1
end
local tail = pos - 1  -- ARGV[tail + n]: the n-th value of RECORD_BOUNCE_TAIL
local matched, i = ARGV[tail + ${record_bounce.matched}], ARGV[tail + ${record_bounce.rcpt}]
local state, event = ARGV[tail + ${record_bounce.state}], ARGV[tail + ${record_bounce.event}]
local address = ARGV[tail + ${record_bounce.suppress_address}]
local suppression = ARGV[tail + ${record_bounce.suppression}]
local message_id = ARGV[tail + ${record_bounce.message_id}]
local status_prefix = ARGV[tail + ${record_bounce.status_index_prefix}]
local hot = matched == '1' and redis.call('EXISTS', KEYS[6]) == 1
local late = matched == '1' and not hot
local retention = tonumber(ARGV[tail + ${record_bounce.retention_s}])
-- whoever holds a recipient's copy can report about it again and again: past the most
-- reports per recipient, nothing is stored, counted or sent to webhooks
local max_reports = tonumber(ARGV[tail + ${record_bounce.max_per_recipient}])
if hot and redis.call('HINCRBY', KEYS[6], 'reports:' .. i, 1) > max_reports then
  return 'skipped'
end
if late then
  local reports = redis.call('INCR', KEYS[10])
  redis.call('EXPIRE', KEYS[10], retention)
  if reports > max_reports then return 'skipped' end
end
local inactive = '0'
if address ~= '' then
  if redis.call('HSETNX', KEYS[5], address, suppression) == 1 then
    inactive = '1'
    redis.call('INCR', KEYS[9])
  end
end
fields[#fields + 1] = 'inactive'
fields[#fields + 1] = inactive
local horizon = tonumber(ARGV[2]) - retention * 1000
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], retention)
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[2], ARGV[3], 'EX', retention)
end
redis.call('ZADD', KEYS[3], tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', horizon)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', horizon)
-- an unmatched report proves nothing: it is counted apart, never by the type it claims
-- (the bounce rate and mailrelay_bounces_total{type} count only proven bounces)
count(ARGV[tail + ${record_bounce.stats_minute_prefix}], ARGV[tail + ${record_bounce.stats_hour_prefix}],
      tonumber(ARGV[2]),
      matched == '1' and ('bounce:' .. (fields_type or 'Unknown')) or 'bounce:Unmatched', 1)
if matched == '1' then
  if hot then
    if state ~= '' then
      redis.call('HSET', KEYS[6], 'state:' .. i, state)
      update_status(KEYS[6], message_id, status_prefix)
    end
    if event ~= '' then
      redis.call('RPUSH', KEYS[7], event)
    end
  end
else
  redis.call('ZADD', KEYS[4], tonumber(ARGV[2]), ARGV[1])
  -- anyone can send unmatched reports: only the newest max_unmatched are kept, so that a
  -- flood of them cannot fill Redis (which holds the queue)
  local extra = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[tail + ${record_bounce.max_unmatched}])
  if extra > 0 then
    local oldest = redis.call('ZRANGE', KEYS[4], 0, extra - 1)
    local bounce_prefix = ARGV[tail + ${record_bounce.bounce_prefix}]
    local raw_prefix = ARGV[tail + ${record_bounce.bounce_raw_prefix}]
    for _, old in ipairs(oldest) do
      redis.call('DEL', bounce_prefix .. old, raw_prefix .. old)
      redis.call('ZREM', KEYS[3], old)
    end
    redis.call('ZREMRANGEBYRANK', KEYS[4], 0, extra - 1)
  end
end
-- every stored bounce reaches the stream, which the archiver reads: as the recipient's event
-- when there is one, else as 'bounce_stored' (no webhook event: the webhook service skips it)
if event ~= '' and late then
  redis.call('XADD', KEYS[8], '*', 'type', ARGV[tail + ${record_bounce.event_type}], 'msg', message_id,
             'rcpt', i, 'bounce', ARGV[1], 'at', ARGV[2], 'late', '1', 'event', event, 'state', state)
elseif event ~= '' then
  redis.call('XADD', KEYS[8], '*', 'type', ARGV[tail + ${record_bounce.event_type}], 'msg', message_id,
             'rcpt', i, 'bounce', ARGV[1], 'at', ARGV[2])
elseif matched == '1' then
  redis.call('XADD', KEYS[8], '*', 'type', 'bounce_stored', 'msg', message_id, 'rcpt', i,
             'bounce', ARGV[1], 'at', ARGV[2])
else
  redis.call('XADD', KEYS[8], '*', 'type', 'bounce_stored', 'bounce', ARGV[1], 'at', ARGV[2])
end
return inactive
