-- KEYS: leases; ARGV: msg key prefix
-- Returns a flat list: recipient address, received_at (or -1) per leased job.
local out = {}
for _, job in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local dot = string.find(job, '.', 1, true)
  if dot then
    local id, i = string.sub(job, 1, dot - 1), string.sub(job, dot + 1)
    local row = redis.call('HMGET', ARGV[1] .. id, 'rcpt:' .. i, 'received_at')
    if row[1] then
      out[#out + 1] = row[1]
      out[#out + 1] = row[2] or '-1'
    end
  end
end
return out
