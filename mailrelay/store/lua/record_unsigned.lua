-- KEYS: msg, timeline, events; ARGV: id, now_ms, minute and hour counter
--       prefixes (P idx:stats:m:, P idx:stats:h:), then one unsigned event (JSON) per recipient
-- Returns 0 when the message is gone, else 1.
--#include _count

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
for k = 5, #ARGV do
  redis.call('RPUSH', KEYS[2], ARGV[k])
end
redis.call('XADD', KEYS[3], '*', 'type', 'unsigned', 'msg', ARGV[1], 'at', ARGV[2])
count(ARGV[3], ARGV[4], tonumber(ARGV[2]), 'unsigned', 1)
return 1
