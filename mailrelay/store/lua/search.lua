-- KEYS: index zset; ARGV: max score ("+inf" or number), min score, count, hash key prefix,
--       field names... Returns flat: member, score, then the fields' values, per entry
--       (newest first). Members whose hash expired are skipped.
local rows = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local names = {}
for k = 5, #ARGV do names[#names + 1] = ARGV[k] end
local out = {}
for k = 1, #rows, 2 do
  local values = redis.call('HMGET', ARGV[4] .. rows[k], unpack(names))
  if values[1] then
    out[#out + 1] = rows[k]
    out[#out + 1] = rows[k + 1]
    for _, v in ipairs(values) do out[#out + 1] = v or '' end
  end
end
return out
