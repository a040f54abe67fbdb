-- KEYS: none of its own (a shared piece: scripts --#include it)
-- ARGV: none of its own; defines update_domain(domains_key, dkey, domain) and domain_of(address)
-- Shared Lua: after a domain queue changed, keep queue:domains at its earliest due time.
local function update_domain(domains_key, dkey, domain)
  local first = redis.call('ZRANGE', dkey, 0, 0, 'WITHSCORES')
  if #first == 0 then
    redis.call('ZREM', domains_key, domain)
  else
    redis.call('ZADD', domains_key, first[2], domain)
  end
end
local function domain_of(address)
  local at = string.find(address, '@[^@]*$')
  return string.lower(string.sub(address, (at or 0) + 1))
end
