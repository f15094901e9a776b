//! Per-source admission: ipAllowList, rateLimit (token bucket) and inFlightReq.
//!
//! The limiter is a plain state machine over `Instant`s, so tests drive it without
//! sleeping.

use crate::middleware::MiddlewareError;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;
use ipnet::IpNet;

use super::config::{IpStrategy, SourceCriterion};

/// Where the client IP comes from: the socket peer, or `X-Forwarded-For` by depth.
#[derive(Debug, Clone, Default)]
pub struct IpSource {
    depth: usize,
    excluded: Vec<IpNet>,
}

fn parse_net(s: &str) -> Result<IpNet, MiddlewareError> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| MiddlewareError::from(format!("invalid IP or CIDR {s:?}")))
}

impl IpSource {
    /// From an `ipStrategy`.
    pub fn new(s: Option<&IpStrategy>) -> Result<Self, MiddlewareError> {
        let Some(s) = s else { return Ok(Self::default()) };
        if s.ipv6_subnet.is_some() {
            return Err("ipStrategy.ipv6Subnet is not supported yet".into());
        }
        Ok(IpSource {
            depth: s.depth.unwrap_or(0).max(0) as usize,
            excluded: s.excluded_ips.iter().map(|e| parse_net(e)).collect::<Result<_, _>>()?,
        })
    }

    /// The client IP this strategy sees.
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        if self.depth == 0 && self.excluded.is_empty() {
            return peer;
        }
        let xff: Vec<String> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
            .collect();
        if self.depth > 0 {
            return xff.len().checked_sub(self.depth).and_then(|i| xff[i].parse().ok());
        }
        xff.iter()
            .rev()
            .filter_map(|s| s.parse::<IpAddr>().ok())
            .find(|ip| !self.excluded.iter().any(|n| n.contains(ip)))
    }
}

/// ipAllowList.
#[derive(Debug, Clone)]
pub struct IpAllow {
    ranges: Vec<IpNet>,
    source: IpSource,
    /// Status for a refused client (default 403).
    pub reject_status: http::StatusCode,
}

impl IpAllow {
    /// Compiles the configuration.
    pub fn new(cfg: &super::config::IpAllowList) -> Result<Self, MiddlewareError> {
        let reject_status = match cfg.reject_status_code {
            None | Some(0) => http::StatusCode::FORBIDDEN,
            Some(c) => http::StatusCode::from_u16(c)
                .map_err(|_| MiddlewareError::from(format!("invalid rejectStatusCode {c}")))?,
        };
        Ok(IpAllow {
            ranges: cfg.source_range.iter().map(|r| parse_net(r)).collect::<Result<_, _>>()?,
            source: IpSource::new(cfg.ip_strategy.as_ref())?,
            reject_status,
        })
    }

    /// Whether the request may pass.
    pub fn allows(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> bool {
        self.source
            .client_ip(peer, headers)
            .is_some_and(|ip| self.ranges.iter().any(|n| n.contains(&ip.to_canonical())))
    }
}

/// Who a limit counts: by IP (default), by a header, or by host.
#[derive(Debug, Clone)]
pub enum SourceKey {
    /// Client IP under an IP strategy.
    Ip(IpSource),
    /// A request header's value.
    Header(String),
    /// The request host.
    Host,
}

impl SourceKey {
    /// From a `sourceCriterion`.
    pub fn new(c: Option<&SourceCriterion>) -> Result<Self, MiddlewareError> {
        match c {
            Some(SourceCriterion { request_header_name: Some(h), .. }) if !h.is_empty() => {
                Ok(SourceKey::Header(h.clone()))
            }
            Some(SourceCriterion { request_host: Some(true), .. }) => Ok(SourceKey::Host),
            Some(c) => Ok(SourceKey::Ip(IpSource::new(c.ip_strategy.as_ref())?)),
            None => Ok(SourceKey::Ip(IpSource::default())),
        }
    }

    /// The key of a request.
    pub fn key(&self, peer: Option<IpAddr>, headers: &HeaderMap, host: &str) -> String {
        match self {
            SourceKey::Ip(s) => s.client_ip(peer, headers).map(|ip| ip.to_string()).unwrap_or_default(),
            SourceKey::Header(h) => headers.get(h.as_str()).and_then(|v| v.to_str().ok()).unwrap_or("").to_string(),
            SourceKey::Host => host.to_string(),
        }
    }
}

/// A token bucket: `burst` tokens at most, refilled at `rate_per_sec`; a request takes
/// one. The arithmetic of the rateLimit middleware and of API plans' rate limits; the
/// caller keeps the buckets and passes the clock.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn full(burst: f64, now: Instant) -> TokenBucket {
        TokenBucket { tokens: burst, at: now }
    }

    /// Whether the bucket is full at `now` (it then carries no state worth keeping).
    pub fn is_full(&self, rate_per_sec: f64, burst: f64, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate_per_sec >= burst
    }

    /// Takes a token at `now`: at once, after a wait no longer than `max_delay` (the token
    /// is reserved), or not at all (refused, with the wait that would be needed).
    pub fn take(&mut self, rate_per_sec: f64, burst: f64, max_delay: Duration, now: Instant) -> Admission {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate_per_sec).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Admission::Now;
        }
        let wait = secs_f64((1.0 - self.tokens) / rate_per_sec);
        if wait <= max_delay {
            self.tokens -= 1.0; // reserved: the token that arrives during the wait is ours
            Admission::After(wait)
        } else {
            Admission::Refuse(wait)
        }
    }

    /// Whole tokens left at `now` (what `X-RateLimit-Remaining` says).
    pub fn remaining(&self, rate_per_sec: f64, burst: f64, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate_per_sec).min(burst).max(0.0).floor() as u64
    }
}

/// A token bucket per source: `average` requests per `period`, bursts of `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    rate_per_sec: f64,
    burst: f64,
    max_delay: Duration,
    /// How sources are told apart.
    pub source: SourceKey,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

/// The limiter's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admission {
    /// Go now.
    Now,
    /// Go after waiting this long (short enough to be worth it).
    After(Duration),
    /// Refuse; retry after this long.
    Refuse(Duration),
}

impl RateLimiter {
    /// Compiles a rateLimit configuration.
    pub fn new(cfg: &super::config::RateLimit) -> Result<Self, MiddlewareError> {
        let period = cfg.period.as_ref().map(|p| p.as_duration()).transpose()?.unwrap_or(Duration::from_secs(1));
        if period.is_zero() {
            return Err("rateLimit.period must be positive".into());
        }
        if cfg.average < 0 {
            return Err("rateLimit.average must not be negative".into());
        }
        let rate_per_sec = cfg.average as f64 / period.as_secs_f64();
        let burst = cfg.burst.unwrap_or(1).max(1) as f64;
        // Traefik delays a request when the wait is under half an interval between two
        // requests at the configured rate; longer waits are refused.
        let max_delay = if rate_per_sec > 0.0 { secs_f64((0.5 / rate_per_sec).min(0.5)) } else { Duration::ZERO };
        Ok(RateLimiter {
            rate_per_sec,
            burst,
            max_delay,
            source: SourceKey::new(cfg.source_criterion.as_ref())?,
            buckets: Mutex::default(),
        })
    }

    /// Takes a token for `key` at `now`.
    pub fn admit(&self, key: &str, now: Instant) -> Admission {
        if self.rate_per_sec == 0.0 {
            return Admission::Now; // average 0 means no limit, as in Traefik.
        }
        let Ok(mut buckets) = self.buckets.lock() else { return Admission::Now };
        let (rate, burst) = (self.rate_per_sec, self.burst);
        if buckets.len() > 65_536 {
            // Bound memory: forget full buckets (they carry no state).
            buckets.retain(|_, b| !b.is_full(rate, burst, now));
        }
        let b = buckets.entry(key.to_string()).or_insert(TokenBucket::full(burst, now));
        b.take(rate, burst, self.max_delay, now)
    }
}

/// Seconds as a duration, saturating instead of panicking on what configuration
/// extremes can produce (a rate of one request per 292 years).
fn secs_f64(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX)
}

/// inFlightReq: at most `amount` requests in flight per source.
#[derive(Debug)]
pub struct InFlight {
    amount: usize,
    /// How sources are told apart.
    pub source: SourceKey,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

/// Releases an in-flight slot when dropped (when the response body is done).
#[derive(Debug)]
pub struct InFlightGuard {
    key: String,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Ok(mut c) = self.counts.lock() {
            if let Some(n) = c.get_mut(&self.key) {
                *n -= 1;
                if *n == 0 {
                    c.remove(&self.key);
                }
            }
        }
    }
}

impl InFlight {
    /// Compiles an inFlightReq configuration.
    pub fn new(cfg: &super::config::InFlightReq) -> Result<Self, MiddlewareError> {
        if cfg.amount <= 0 {
            return Err("inFlightReq.amount must be positive".into());
        }
        Ok(InFlight {
            amount: cfg.amount as usize,
            source: SourceKey::new(cfg.source_criterion.as_ref())?,
            counts: Arc::default(),
        })
    }

    /// Takes a slot, or `None` when the source is at its limit.
    pub fn acquire(&self, key: &str) -> Option<InFlightGuard> {
        let mut c = self.counts.lock().ok()?;
        let n = c.entry(key.to_string()).or_insert(0);
        if *n >= self.amount {
            return None;
        }
        *n += 1;
        Some(InFlightGuard { key: key.to_string(), counts: self.counts.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::config::{InFlightReq, IntOrString, IpAllowList, RateLimit};
    use http::HeaderValue;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn ip_allow_list_uses_peer_by_default_and_xff_by_depth() {
        let cfg = IpAllowList {
            source_range: vec!["10.0.0.0/8".into(), "192.168.1.7".into()],
            ip_strategy: None,
            reject_status_code: None,
        };
        let a = IpAllow::new(&cfg).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.1.1.1"));
        assert!(a.allows(ip("10.2.3.4"), &h));
        assert!(a.allows(ip("192.168.1.7"), &h));
        assert!(!a.allows(ip("192.168.1.8"), &h), "X-Forwarded-For is not trusted by default");
        assert_eq!(a.reject_status, http::StatusCode::FORBIDDEN);
        let cfg = IpAllowList {
            ip_strategy: Some(IpStrategy { depth: Some(2), ..Default::default() }),
            reject_status_code: Some(404),
            ..cfg
        };
        let a = IpAllow::new(&cfg).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1, 10.9.9.9, 2.2.2.2"));
        assert!(a.allows(ip("8.8.8.8"), &h));
        assert_eq!(a.reject_status, http::StatusCode::NOT_FOUND);
        assert!(
            IpAllow::new(&IpAllowList {
                source_range: vec!["nope".into()],
                ip_strategy: None,
                reject_status_code: None
            })
            .is_err()
        );
    }

    #[test]
    fn token_bucket_allows_burst_then_delays_or_refuses() {
        let cfg = RateLimit {
            average: 10,
            period: Some(IntOrString::Str("1s".into())),
            burst: Some(2),
            source_criterion: None,
            redis: None,
        };
        let rl = RateLimiter::new(&cfg).unwrap();
        let t0 = Instant::now();
        assert_eq!(rl.admit("a", t0), Admission::Now);
        assert_eq!(rl.admit("a", t0), Admission::Now);
        // Empty: the next token is 100 ms away, more than the 50 ms worth waiting.
        assert!(matches!(rl.admit("a", t0), Admission::Refuse(d) if d > Duration::from_millis(90)));
        // Another source has its own bucket.
        assert_eq!(rl.admit("b", t0), Admission::Now);
        // 60 ms later, 0.6 token: 40 ms wait is short enough to delay.
        assert!(
            matches!(rl.admit("a", t0 + Duration::from_millis(60)), Admission::After(d) if d <= Duration::from_millis(50))
        );
        // After a full second, the bucket is full again.
        assert_eq!(rl.admit("a", t0 + Duration::from_secs(2)), Admission::Now);
    }

    #[test]
    fn zero_average_means_unlimited() {
        let rl =
            RateLimiter::new(&RateLimit { average: 0, period: None, burst: None, source_criterion: None, redis: None })
                .unwrap();
        let t = Instant::now();
        for _ in 0..100 {
            assert_eq!(rl.admit("a", t), Admission::Now);
        }
    }

    #[test]
    fn in_flight_slots_are_released_on_drop() {
        let f = InFlight::new(&InFlightReq { amount: 2, source_criterion: None }).unwrap();
        let g1 = f.acquire("a").unwrap();
        let _g2 = f.acquire("a").unwrap();
        assert!(f.acquire("a").is_none());
        assert!(f.acquire("b").is_some());
        drop(g1);
        assert!(f.acquire("a").is_some());
    }

    #[test]
    fn source_keys() {
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("alice"));
        let k =
            SourceKey::new(Some(&SourceCriterion { request_header_name: Some("X-User".into()), ..Default::default() }))
                .unwrap();
        assert_eq!(k.key(ip("1.2.3.4"), &h, "h"), "alice");
        let k = SourceKey::new(Some(&SourceCriterion { request_host: Some(true), ..Default::default() })).unwrap();
        assert_eq!(k.key(ip("1.2.3.4"), &h, "api.test"), "api.test");
        assert_eq!(SourceKey::new(None).unwrap().key(ip("1.2.3.4"), &h, "x"), "1.2.3.4");
    }
}
