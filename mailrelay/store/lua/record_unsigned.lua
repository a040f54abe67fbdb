-- KEYS: msg, timeline, events; ARGV: id, events_maxlen, now_ms, minute and hour counter
--       prefixes (P idx:stats:m:, P idx:stats:h:), then one unsigned event (JSON) per recipient
-- Returns 0 when the message is gone, else 1.
--#include _count

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
for k = 6, #ARGV do
  redis.call('RPUSH', KEYS[2], ARGV[k])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'type', 'unsigned', 'msg', ARGV[1], 'at', ARGV[3])
count(ARGV[4], ARGV[5], tonumber(ARGV[3]), 'unsigned', 1)
return 1
