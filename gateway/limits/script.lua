-- keygate's rate limits and quota for one request, atomically, on Redis's clock
-- (gateway/limits/redis.py; the arithmetic of gateway/limits/gcra.py in integer
-- microseconds). Only a request that every rate limit and the quota let
-- through is counted.
--
-- KEYS: one per rate limit (its GCRA theoretical arrival time), then the quota's
--   hash {w = window name, n = count} when there is a quota.
-- ARGV: now in microseconds, or '' for Redis's TIME (tests give one);
--   the number of rate limits n; per rate limit its interval and tolerance (us);
--   the quota's limit (0: none), its period (day | month), and the store's
--   count as a floor: window name and count.
-- Returns: {status (0 allowed, 1 rate limited, 2 quota exceeded), window name,
--   quota count, microseconds to the window's end, then per rate limit
--   allowed (1/0), remaining, microseconds to a whole burst, microseconds to wait}.

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Howard Hinnant's civil calendar algorithms (proleptic Gregorian, UTC days).
local function civil(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local DAY = 86400000000
local n = tonumber(ARGV[2])
local out = {}
local tats = {}
local status = 0
for i = 1, n do
  local interval = tonumber(ARGV[1 + 2 * i])
  local tolerance = tonumber(ARGV[2 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat == nil or tat < now then tat = now end
  local new = tat + interval
  local allow_at = new - tolerance
  if allow_at > now then
    status = 1
    tats[i] = false
    out[#out + 1] = 0
    out[#out + 1] = 0
    out[#out + 1] = tat - now
    out[#out + 1] = allow_at - now
  else
    tats[i] = new
    out[#out + 1] = 1
    out[#out + 1] = math.floor((tolerance - (new - now)) / interval + 1e-9)
    out[#out + 1] = new - now
    out[#out + 1] = 0
  end
end

local base = 2 * n + 2
local limit = tonumber(ARGV[base + 1])
local name, ends, used = '', 0, 0
if limit > 0 then
  local days = math.floor(now / DAY)
  local y, m, d = civil(days)
  if ARGV[base + 2] == 'day' then
    name = string.format('%04d-%02d-%02d', y, m, d)
    ends = (days + 1) * DAY
  else
    name = string.format('%04d-%02d', y, m)
    if m == 12 then y, m = y + 1, 1 else m = m + 1 end
    ends = days_from_civil(y, m, 1) * DAY
  end
  local stored = redis.call('HMGET', KEYS[n + 1], 'w', 'n')
  if stored[1] == name then used = tonumber(stored[2]) end
  if ARGV[base + 3] == name then
    local floor = tonumber(ARGV[base + 4])
    if floor > used then used = floor end
  end
  if status == 0 and used >= limit then status = 2 end
end

if status == 0 then
  for i = 1, n do
    redis.call('SET', KEYS[i], string.format('%.0f', tats[i]),
      'PX', math.max(1, math.ceil((tats[i] - now) / 1000)))
  end
  if limit > 0 then
    used = used + 1
    redis.call('HSET', KEYS[n + 1], 'w', name, 'n', used)
    -- Kept a minute past its window: nothing reads it after that.
    redis.call('PEXPIRE', KEYS[n + 1], math.ceil((ends - now) / 1000) + 60000)
  end
end

local head = {status, name, used, ends - now}
for i = 1, #out do head[#head + 1] = out[i] end
return head
