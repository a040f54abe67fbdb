-- KEYS: events, webhook queue
-- ARGV: consumer group, stream entry id, due_ms, job key prefix, job ttl_s, now_ms, then 8
--       values per job: job id, url, hook index, payload, event, message id, rcpt index,
--       recipient
-- Acknowledges the event and stores its webhook jobs in one step. Returns the number of jobs
-- stored, or -1 when the entry was acknowledged already (another daemon reclaimed it and
-- got there first): each event is turned into jobs once.
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return -1
end
local n = 0
for k = 7, #ARGV, 8 do
  local jkey = ARGV[4] .. ARGV[k]
  redis.call('HSET', jkey, 'url', ARGV[k + 1], 'hook', ARGV[k + 2], 'payload', ARGV[k + 3],
             'event', ARGV[k + 4], 'message_id', ARGV[k + 5], 'rcpt', ARGV[k + 6],
             'recipient', ARGV[k + 7], 'attempts', 0, 'created', ARGV[6])
  redis.call('EXPIRE', jkey, tonumber(ARGV[5]))
  redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[k])
  n = n + 1
end
return n
