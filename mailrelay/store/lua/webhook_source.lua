-- KEYS: msg, timeline, bounces index
-- ARGV: rcpt index, bounce id ("" = the event names none), bounce key prefix ("P bounce:"),
--       look up ("1": find the bounce records of this message scored within window_ms of
--       at_ms, for in-band bounces whose stream entry names no record), at_ms, window_ms,
--       message id
-- Returns {tag, metadata, recipient address, {timeline entries}, {bounce records as flat
-- HGETALL lists}} (missing values are nil).
local row = redis.call('HMGET', KEYS[1], 'tag', 'metadata', 'rcpt:' .. ARGV[1])
local timeline = redis.call('LRANGE', KEYS[2], 0, -1)
local bounces = {}
if ARGV[2] ~= '' then
  local record = redis.call('HGETALL', ARGV[3] .. ARGV[2])
  if #record > 0 then bounces[1] = record end
elseif ARGV[4] == '1' then
  local at, window = tonumber(ARGV[5]), tonumber(ARGV[6])
  local ids = redis.call('ZRANGEBYSCORE', KEYS[3], at - window, at + window, 'LIMIT', 0, 2000)
  for _, id in ipairs(ids) do
    if redis.call('HGET', ARGV[3] .. id, 'message_id') == ARGV[7] then
      bounces[#bounces + 1] = redis.call('HGETALL', ARGV[3] .. id)
      if #bounces >= 50 then break end
    end
  end
end
return {row[1], row[2], row[3], timeline, bounces}
