-- KEYS: webhook queue, job, timeline, events
-- ARGV: job id, owner, outcome, due_ms, attempts, last error, timeline event (JSON), message
--       id, rcpt index, now_ms
-- Outcomes: done (delivered or dropped: the job is deleted), retry (attempts and error kept,
-- due at due_ms), release (due at due_ms, no attempt counted: shutdown), failed (deleted, and
-- the event appended to the message's timeline while it is retained, with a 'webhook_failed'
-- entry in the event stream: the archiver archives the longer timeline).
-- Returns OK, GONE (no such job) or STOLEN (another daemon leased it since: left to it; done
-- deletes it anyway, the POST succeeded).
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 'GONE'
end
local outcome = ARGV[3]
if outcome ~= 'done' and redis.call('HGET', KEYS[2], 'owner') ~= ARGV[2] then
  return 'STOLEN'
end
if outcome == 'done' or outcome == 'failed' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
  if outcome == 'failed' and redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('RPUSH', KEYS[3], ARGV[7])
    redis.call('XADD', KEYS[4], '*', 'type', 'webhook_failed', 'msg', ARGV[8], 'rcpt', ARGV[9],
               'at', ARGV[10])
  end
  return 'OK'
end
redis.call('HDEL', KEYS[2], 'owner')
if outcome == 'retry' then
  redis.call('HSET', KEYS[2], 'attempts', ARGV[5], 'last_error', ARGV[6])
end
redis.call('ZADD', KEYS[1], tonumber(ARGV[4]), ARGV[1])
return 'OK'
