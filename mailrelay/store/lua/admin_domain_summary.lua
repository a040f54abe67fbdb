-- KEYS: queue:d:<domain>; ARGV: msg key prefix, start rank, count
-- Returns {jobs read, queued (no attempt yet), deferred (attempts > 0), oldest received_at or -1}.
local start = tonumber(ARGV[2])
local jobs = redis.call('ZRANGE', KEYS[1], start, start + tonumber(ARGV[3]) - 1)
local queued, deferred, oldest = 0, 0, -1
for _, job in ipairs(jobs) do
  local dot = string.find(job, '.', 1, true)
  if dot then
    local id, i = string.sub(job, 1, dot - 1), string.sub(job, dot + 1)
    local row = redis.call('HMGET', ARGV[1] .. id, 'attempts:' .. i, 'received_at')
    if tonumber(row[1] or '0') > 0 then deferred = deferred + 1 else queued = queued + 1 end
    local received = tonumber(row[2])
    if received and (oldest < 0 or received < oldest) then oldest = received end
  end
end
return {#jobs, queued, deferred, oldest}
