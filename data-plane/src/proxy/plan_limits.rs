//! Where plan counters live: in this data plane's memory (exact for one data plane), or in
//! Redis when the configuration names a server (`hub.redis`), exact across every data plane
//! that shares it.
//!
//! In Redis, each request runs one Lua script ([`SCRIPT`]) that does what
//! [`atrium_routing::apim::Counters::admit`] does in memory (the quota's sliding window
//! first, then the rate limit's token bucket; an admitted request counts against both),
//! atomically, on Redis's own clock, so data planes with skewed clocks still agree. That is
//! one round trip per request to an API route.
//!
//! When Redis cannot answer within its timeout, the failure policy decides: `open` lets
//! the request through uncounted, `closed` answers 503. Either way the failure is logged (at
//! most once per second) and counted, and the connection is re-established by itself.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use atrium_proto::v1 as pb;
use atrium_routing::apim::{Counters, Grant, Limit, Outcome, bucket_key};
use atrium_routing::middleware::limits::Admission;

/// What a data plane does when Redis does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Let requests through, uncounted (the default: an outage of the counter store does
    /// not become an outage of every API).
    #[default]
    Open,
    /// Refuse requests to APIs with 503.
    Closed,
}

/// API management settings of a data plane.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApimConfig {
    /// The longest wait a request over a plan's rate limit is made to take before it is
    /// refused (0: refused at once).
    pub max_rate_limit_delay: Duration,
    /// What happens when Redis does not answer.
    pub redis_failure: FailurePolicy,
}

/// Why counters could not be checked.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plan counters in Redis at {endpoint}: {reason}")]
pub struct StoreError {
    endpoint: String,
    reason: String,
}

/// The plan counters of a data plane.
pub(crate) struct PlanLimits {
    local: Mutex<Counters>,
    global: ArcSwapOption<RedisCounters>,
    /// When a Redis failure was last logged (failures are logged once per second).
    last_logged: Mutex<Option<Instant>>,
}

impl Default for PlanLimits {
    fn default() -> Self {
        PlanLimits { local: Mutex::default(), global: ArcSwapOption::empty(), last_logged: Mutex::new(None) }
    }
}

impl PlanLimits {
    /// Follows a configuration: connects to the Redis it names (keeping the connection when
    /// the settings did not change), or goes back to local counters; forgets idle local
    /// counters.
    pub(crate) fn configure(&self, redis: Option<&pb::Redis>) {
        let current = self.global.load();
        match (redis, current.as_ref()) {
            (Some(want), Some(have)) if &have.settings == want => {}
            (Some(want), _) => {
                let r = RedisCounters::new(want.clone());
                match &r.broken {
                    None => {
                        tracing::info!(endpoint = %want.endpoint, database = want.database, "plan counters in Redis")
                    }
                    // Never back to local counters: N data planes would let N times the
                    // limit through. The failure policy applies to every request instead.
                    Some(e) => tracing::error!(error = %e, "plan counters in Redis cannot be used"),
                }
                self.global.store(Some(Arc::new(r)));
            }
            (None, Some(_)) => {
                tracing::info!("plan counters are local to this data plane");
                self.global.store(None);
            }
            (None, None) => {}
        }
        if let Ok(mut c) = self.local.lock() {
            c.evict_idle(Instant::now());
        }
    }

    /// What is left of `grant`'s plan, counting nothing: on this data plane's own counters,
    /// or on Redis's when it holds them (none when Redis does not answer).
    pub(crate) async fn peek(&self, grant: &Grant<'_>) -> Option<(Option<u64>, Option<u64>)> {
        match self.global.load_full() {
            None => self.local.lock().ok().map(|c| c.peek(grant, Instant::now())),
            Some(global) => match global.peek(grant).await {
                Ok(left) => Some(left),
                Err(e) => {
                    self.log_failure(&e);
                    None
                }
            },
        }
    }

    /// Counts a request under `grant`. `Err` when Redis holds the counters and did not
    /// answer (the failure is logged here).
    pub(crate) async fn admit(&self, grant: &Grant<'_>, max_delay: Duration) -> Result<Outcome, StoreError> {
        let Some(global) = self.global.load_full() else {
            let mut c = self
                .local
                .lock()
                .map_err(|_| StoreError { endpoint: "memory".into(), reason: "counters poisoned by a panic".into() })?;
            return Ok(c.admit(grant, Instant::now(), max_delay));
        };
        let result = Box::pin(global.admit(grant, max_delay)).await;
        if let Err(e) = &result {
            self.log_failure(e);
        }
        result
    }

    fn log_failure(&self, e: &StoreError) {
        let Ok(mut last) = self.last_logged.lock() else { return };
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            tracing::warn!(error = %e, "plan counters unavailable; the Redis failure policy applies");
        }
    }
}

/// The Lua script that counts one request (see the module documentation), or with
/// `peek` only reads what is left, counting nothing (no write happens before it returns).
///
/// KEYS: the quota's counter, the rate limit's counter (either may be an unused name).
/// ARGV: has quota (0/1), quota limit, quota period (ms), has rate (0/1), rate limit, rate
/// period (ms), longest wait (ms), peek (0/1).
/// Returns {admission (0 now, 1 after a wait, 2 refused by the rate, 3 refused by the
/// quota), wait or retry-after (µs), rate remaining (-1: none), quota remaining (-1: none)};
/// with `peek`, {rate remaining, quota remaining}.
pub const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local has_q, q_limit, q_period = ARGV[1] == '1', tonumber(ARGV[2]), tonumber(ARGV[3])
local has_r, r_limit, r_period = ARGV[4] == '1', tonumber(ARGV[5]), tonumber(ARGV[6])
local max_delay = tonumber(ARGV[7])
local peek = ARGV[8] == '1'
local function fmt(x) return string.format('%.17g', x) end

local q_start, q_cur, q_prev, q_used, q_elapsed = now, 0, 0, 0, 0
if has_q then
  local h = redis.call('HMGET', KEYS[1], 's', 'c', 'p')
  q_start, q_cur, q_prev = tonumber(h[1]) or now, tonumber(h[2]) or 0, tonumber(h[3]) or 0
  q_elapsed = now - q_start
  if q_elapsed >= q_period then
    local windows = math.floor(q_elapsed / q_period)
    if windows == 1 then q_prev = q_cur else q_prev = 0 end
    q_cur = 0
    q_start = q_start + windows * q_period
    q_elapsed = now - q_start
  end
  if q_elapsed < 0 then q_elapsed = 0 end
  q_used = q_prev * (1 - q_elapsed / q_period) + q_cur
end

local rate, tokens = 0, 0
if has_r then
  rate = r_limit / r_period
  local h = redis.call('HMGET', KEYS[2], 't', 'at')
  local at
  tokens, at = tonumber(h[1]) or r_limit, tonumber(h[2]) or now
  local elapsed = now - at
  if elapsed < 0 then elapsed = 0 end
  tokens = math.min(r_limit, tokens + elapsed * rate)
end

if peek then
  return {has_r and math.max(0, math.floor(tokens)) or -1, has_q and math.max(0, q_limit - math.ceil(q_used)) or -1}
end
if has_q and q_used + 1 > q_limit then
  local retry = math.max(1000, q_period - q_elapsed)
  return {3, math.floor(retry * 1000), -1, 0}
end

local admission, wait, r_left = 0, 0, -1
if has_r then
  if tokens >= 1 then
    tokens = tokens - 1
  else
    wait = (1 - tokens) / rate
    if wait <= max_delay then
      tokens = tokens - 1
      admission = 1
    else
      return {2, math.floor(wait * 1000), 0, has_q and math.max(0, q_limit - math.ceil(q_used)) or -1}
    end
  end
  redis.call('HSET', KEYS[2], 't', fmt(tokens), 'at', fmt(now))
  redis.call('PEXPIRE', KEYS[2], math.ceil((r_limit - tokens) / rate) + 1000)
  r_left = math.max(0, math.floor(tokens))
end

local q_left = -1
if has_q then
  q_cur = q_cur + 1
  redis.call('HSET', KEYS[1], 's', fmt(q_start), 'c', q_cur, 'p', q_prev)
  redis.call('PEXPIRE', KEYS[1], math.ceil(2 * q_period))
  q_left = math.max(0, q_limit - math.ceil(q_used + 1))
end
return {admission, math.floor(wait * 1000), r_left, q_left}
"#;

/// Counters in a Redis server.
struct RedisCounters {
    settings: pb::Redis,
    client: Option<redis::Client>,
    conn: ArcSwapOption<redis::aio::ConnectionManager>,
    /// Why the settings cannot make a client.
    broken: Option<StoreError>,
    /// Timeouts in a row.
    timeouts: std::sync::atomic::AtomicU32,
    script: redis::Script,
    timeout: Duration,
}

/// After this many failures (timeouts mostly) in a row, the connection is replaced: a connection whose peer
/// went silent (a partition, a failover to another address) is otherwise kept until TCP
/// gives up, minutes later.
const TIMEOUTS_BEFORE_RECONNECT: u32 = 3;

impl RedisCounters {
    /// A connection made on first use and remade after a failure, by itself. Settings that
    /// cannot make a client leave it broken (every request gets the failure policy).
    fn new(settings: pb::Redis) -> RedisCounters {
        let timeout = Duration::from_millis(settings.timeout_ms.max(1));
        let mut r = RedisCounters {
            client: None,
            conn: ArcSwapOption::empty(),
            broken: None,
            timeouts: std::sync::atomic::AtomicU32::new(0),
            script: redis::Script::new(SCRIPT),
            timeout,
            settings,
        };
        match r.client() {
            Ok(client) => {
                r.conn.store(r.connect(&client).ok().map(Arc::new));
                r.client = Some(client);
            }
            Err(e) => r.broken = Some(e),
        }
        r
    }

    fn client(&self) -> Result<redis::Client, StoreError> {
        let s = &self.settings;
        let err = |reason: String| StoreError { endpoint: s.endpoint.clone(), reason };
        let (host, port) = s
            .endpoint
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_start_matches('[').trim_end_matches(']').to_string(), p.parse().ok()?)))
            .ok_or_else(|| err("the endpoint is not host:port".into()))?;
        let mut redis_info = redis::RedisConnectionInfo::default().set_db(s.database);
        if !s.username.is_empty() {
            redis_info = redis_info.set_username(&s.username);
        }
        if !s.password.is_empty() {
            redis_info = redis_info.set_password(&s.password);
        }
        let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(host, port))
            .map_err(|e| err(e.to_string()))?
            .set_redis_settings(redis_info);
        redis::Client::open(info).map_err(|e| err(e.to_string()))
    }

    fn connect(&self, client: &redis::Client) -> Result<redis::aio::ConnectionManager, StoreError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| StoreError { endpoint: self.settings.endpoint.clone(), reason: e.to_string() })
    }

    /// Counts a failure; after [`TIMEOUTS_BEFORE_RECONNECT`] in a row, replaces the
    /// connection.
    fn timed_out(&self) {
        use std::sync::atomic::Ordering;
        if self.timeouts.fetch_add(1, Ordering::AcqRel) + 1 >= TIMEOUTS_BEFORE_RECONNECT {
            self.timeouts.store(0, Ordering::Release);
            if let Some(client) = &self.client {
                tracing::warn!(endpoint = %self.settings.endpoint, "Redis does not answer; reconnecting");
                self.conn.store(self.connect(client).ok().map(Arc::new));
            }
        }
    }

    /// Runs [`SCRIPT`] on `grant`'s counters (to count a request, or with `peek` to read
    /// them) within the timeout; its reply.
    async fn call(&self, grant: &Grant<'_>, max_delay: Duration, peek: bool) -> Result<Vec<i64>, StoreError> {
        let err = |reason: String| StoreError { endpoint: self.settings.endpoint.clone(), reason };
        let plan = &grant.subscription.plan;
        let key = |kind: &str, l: Option<&Limit>| match l {
            Some(l) => format!("atrium:{}", bucket_key(kind, l, grant)),
            None => format!("atrium:{kind}:none"),
        };
        let ms = |l: Option<&Limit>| l.map_or(0, |l| l.period.as_millis() as u64);
        let (q, r) = (plan.quota.as_ref(), plan.rate.as_ref());
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(key("quota", q))
            .key(key("rate", r))
            .arg(u8::from(q.is_some()))
            .arg(q.map_or(0, |l| l.limit))
            .arg(ms(q))
            .arg(u8::from(r.is_some()))
            .arg(r.map_or(0, |l| l.limit))
            .arg(ms(r))
            .arg(max_delay.as_millis() as u64)
            .arg(u8::from(peek));
        if let Some(why) = &self.broken {
            return Err(why.clone());
        }
        let Some(conn) = self.conn.load_full() else {
            self.timed_out();
            return Err(err("no connection".into()));
        };
        let mut conn = (*conn).clone();
        let reply: Vec<i64> = match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn)).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                self.timed_out();
                return Err(err(e.to_string()));
            }
            Err(_) => {
                self.timed_out();
                return Err(err(format!("no answer within {:?}", self.timeout)));
            }
        };
        self.timeouts.store(0, std::sync::atomic::Ordering::Release);
        Ok(reply)
    }

    /// What is left of `grant`'s plan, counting nothing.
    async fn peek(&self, grant: &Grant<'_>) -> Result<(Option<u64>, Option<u64>), StoreError> {
        let reply = self.call(grant, Duration::ZERO, true).await?;
        let [rate_left, quota_left] = reply[..] else {
            return Err(StoreError {
                endpoint: self.settings.endpoint.clone(),
                reason: format!("unexpected reply {reply:?}"),
            });
        };
        Ok((u64::try_from(rate_left).ok(), u64::try_from(quota_left).ok()))
    }

    async fn admit(&self, grant: &Grant<'_>, max_delay: Duration) -> Result<Outcome, StoreError> {
        let reply = self.call(grant, max_delay, false).await?;
        let [admission, micros, rate_left, quota_left] = reply[..] else {
            return Err(StoreError {
                endpoint: self.settings.endpoint.clone(),
                reason: format!("unexpected reply {reply:?}"),
            });
        };
        let wait = Duration::from_micros(micros.max(0) as u64);
        let left = |n: i64| u64::try_from(n).ok();
        Ok(Outcome {
            admission: match admission {
                0 => Admission::Now,
                1 => Admission::After(wait),
                _ => Admission::Refuse(wait),
            },
            rate_remaining: left(rate_left),
            quota_remaining: left(quota_left),
        })
    }
}
