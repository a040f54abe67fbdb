-- KEYS: bounce, bounce_raw, bounces index, unmatched index, suppressed, msg, timeline, events,
--       suppressed:version
-- ARGV: bounce id, at_ms, raw, n_fields, field/value pairs..., then:
--       matched ("1"/""), rcpt index, new state ("" = unchanged), event JSON ("" = none),
--       suppress address ("" = none), suppression JSON, events_maxlen, message id, event type,
--       index key prefix, retention (s), unmatched reports kept at most, bounce key prefix
--       ("P bounce:"; the evicted unmatched records and raw messages are deleted), reports
--       stored per recipient at most (more are skipped: the script returns "skipped")
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
local matched, i, state, event = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 3]
local address, suppression = ARGV[pos + 4], ARGV[pos + 5]
-- whoever holds a recipient's copy can report about it again and again: past the most
-- reports per recipient, nothing is stored, counted or sent to webhooks
if matched == '1' and redis.call('EXISTS', KEYS[6]) == 1
    and redis.call('HINCRBY', KEYS[6], 'reports:' .. i, 1) > tonumber(ARGV[pos + 13]) then
  return 'skipped'
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
local retention = tonumber(ARGV[pos + 10])
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
count(ARGV[pos + 9] .. 'stats:', tonumber(ARGV[2]),
      matched == '1' and ('bounce:' .. (fields_type or 'Unknown')) or 'bounce:Unmatched', 1)
if matched == '1' then
  if redis.call('EXISTS', KEYS[6]) == 1 then
    if state ~= '' then
      redis.call('HSET', KEYS[6], 'state:' .. i, state)
      update_status(KEYS[6], ARGV[pos + 7], ARGV[pos + 9])
    end
    if event ~= '' then
      redis.call('RPUSH', KEYS[7], event)
    end
  end
else
  redis.call('ZADD', KEYS[4], tonumber(ARGV[2]), ARGV[1])
  -- anyone can send unmatched reports: only the newest max_unmatched are kept, so that a
  -- flood of them cannot fill Redis (which holds the queue)
  local extra = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[pos + 11])
  if extra > 0 then
    local oldest = redis.call('ZRANGE', KEYS[4], 0, extra - 1)
    for _, old in ipairs(oldest) do
      redis.call('DEL', ARGV[pos + 12] .. old, ARGV[pos + 12] .. 'raw:' .. old)
      redis.call('ZREM', KEYS[3], old)
    end
    redis.call('ZREMRANGEBYRANK', KEYS[4], 0, extra - 1)
  end
end
if event ~= '' then
  redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[pos + 6], '*', 'type', ARGV[pos + 8],
             'msg', ARGV[pos + 7], 'rcpt', i, 'bounce', ARGV[1], 'at', ARGV[2])
end
return inactive
