//! The retry middleware, with Traefik's fields: `attempts` (tries in total),
//! `initialInterval` (first wait of an exponential backoff whose largest wait is twice it;
//! immediate when unset), `timeout` (time allowed for all tries), `status` (ranges of
//! response codes that are retried too), `disableRetryOnNetworkError`,
//! `retryNonIdempotentMethod` (POST, LOCK and PATCH are not retried otherwise) and
//! `maxRequestBodyBytes` (a body is kept in memory to be sent again; over this size the
//! request gets 413; `-1`, the default, means no limit).

use crate::middleware::MiddlewareError;
use std::time::Duration;

use http::{Method, StatusCode};

use super::config::Retry;

/// A compiled retry middleware.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Tries in total (the first one included).
    pub attempts: u32,
    initial_interval: Duration,
    /// Time allowed for every try together.
    pub timeout: Option<Duration>,
    /// Largest request body kept for another try (`None`: no limit).
    pub max_body: Option<u64>,
    statuses: Vec<(u16, u16)>,
    on_network_error: bool,
    non_idempotent: bool,
}

/// Parses `status` items such as `"500"`, `"500-599"` or `"502,504"` into inclusive ranges.
fn status_ranges(items: &[String]) -> Result<Vec<(u16, u16)>, MiddlewareError> {
    let mut out = Vec::new();
    for item in items {
        for part in item.split(',').filter(|p| !p.is_empty()) {
            let code = |s: &str| -> Result<u16, MiddlewareError> {
                s.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .ok_or_else(|| MiddlewareError::from(format!("retry.status: {s:?} is not an HTTP status code")))
            };
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (code(a)?, code(b)?),
                None => (code(part)?, code(part)?),
            };
            if lo > hi {
                return Err(MiddlewareError::from(format!("retry.status: range {part:?} ends before it starts")));
            }
            out.push((lo, hi));
        }
    }
    Ok(out)
}

impl RetryPolicy {
    /// Compiles a `retry` middleware.
    pub fn new(r: &Retry) -> Result<RetryPolicy, MiddlewareError> {
        if r.attempts <= 0 {
            return Err("retry.attempts must be positive".into());
        }
        let attempts = u32::try_from(r.attempts).map_err(|_| "retry.attempts is too large".to_string())?;
        let duration = |d: &Option<super::config::IntOrString>, field: &str| {
            d.as_ref()
                .map(|d| d.as_duration().map_err(|e| MiddlewareError::from(format!("retry.{field}: {e}"))))
                .transpose()
        };
        let max_body = match r.max_request_body_bytes {
            None | Some(-1) => None,
            Some(n) if n >= 0 => Some(n as u64),
            Some(n) => {
                return Err(MiddlewareError::from(format!("retry.maxRequestBodyBytes: {n} (use -1 for no limit)")));
            }
        };
        Ok(RetryPolicy {
            attempts,
            initial_interval: duration(&r.initial_interval, "initialInterval")?.unwrap_or(Duration::ZERO),
            timeout: duration(&r.timeout, "timeout")?.filter(|t| !t.is_zero()),
            max_body,
            statuses: status_ranges(&r.status)?,
            on_network_error: !r.disable_retry_on_network_error.unwrap_or(false),
            non_idempotent: r.retry_non_idempotent_method.unwrap_or(false),
        })
    }

    /// Whether a request with this method may be tried more than once.
    pub fn allows(&self, method: &Method) -> bool {
        self.attempts > 1 && (self.non_idempotent || !matches!(method.as_str(), "POST" | "LOCK" | "PATCH"))
    }

    /// Whether a response with this status is thrown away and the request tried again.
    pub fn retries_status(&self, s: StatusCode) -> bool {
        let c = s.as_u16();
        self.statuses.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c))
    }

    /// Whether a failure to reach the server (no response at all) is tried again.
    pub fn retries_network_errors(&self) -> bool {
        self.on_network_error
    }

    /// The wait before try number `next` (2 for the first retry): the initial interval,
    /// doubled each time, never more than twice the initial interval.
    pub fn backoff(&self, next: u32) -> Duration {
        let doublings = next.saturating_sub(2).min(1);
        self.initial_interval * (1 << doublings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::config::IntOrString;

    fn retry(json: &str) -> Result<RetryPolicy, MiddlewareError> {
        let r: Retry = serde_json::from_str(json).expect("valid retry configuration");
        RetryPolicy::new(&r)
    }

    #[test]
    fn defaults_follow_traefik() {
        let p = retry(r#"{"attempts": 4}"#).unwrap();
        assert_eq!(p.attempts, 4);
        assert_eq!(p.backoff(2), Duration::ZERO, "no initialInterval: retried immediately");
        assert!(p.retries_network_errors());
        assert!(!p.retries_status(StatusCode::BAD_GATEWAY), "answers are final unless status says otherwise");
        assert!(p.allows(&Method::GET) && p.allows(&Method::PUT) && p.allows(&Method::DELETE));
        assert!(!p.allows(&Method::POST) && !p.allows(&Method::PATCH));
        assert!(!p.allows(&Method::from_bytes(b"LOCK").unwrap()));
        assert_eq!((p.max_body, p.timeout), (None, None));
        assert!(!retry(r#"{"attempts": 1}"#).unwrap().allows(&Method::GET), "one attempt is no retry");
    }

    #[test]
    fn backoff_doubles_up_to_twice_the_initial_interval() {
        let p = retry(r#"{"attempts": 5, "initialInterval": "100ms"}"#).unwrap();
        let waits: Vec<_> = (2..=5).map(|n| p.backoff(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 200, 200]);
    }

    #[test]
    fn status_ranges_and_lists() {
        let p = retry(r#"{"attempts": 2, "status": ["400", "500-503", "504,429"]}"#).unwrap();
        for (c, want) in [(400, true), (401, false), (500, true), (503, true), (504, true), (429, true), (505, false)] {
            assert_eq!(p.retries_status(StatusCode::from_u16(c).unwrap()), want, "status {c}");
        }
        assert!(
            retry(r#"{"attempts": 2, "status": ["503-500"]}"#)
                .unwrap_err()
                .to_string()
                .contains("ends before it starts")
        );
        assert!(
            retry(r#"{"attempts": 2, "status": ["600"]}"#).unwrap_err().to_string().contains("not an HTTP status code")
        );
    }

    #[test]
    fn options_and_refusals() {
        let p = retry(
            r#"{"attempts": 3, "timeout": "2s", "maxRequestBodyBytes": 1024, "disableRetryOnNetworkError": true,
                "retryNonIdempotentMethod": true}"#,
        )
        .unwrap();
        assert_eq!(p.timeout, Some(Duration::from_secs(2)));
        assert_eq!(p.max_body, Some(1024));
        assert!(!p.retries_network_errors());
        assert!(p.allows(&Method::POST));
        assert!(retry(r#"{"attempts": 0}"#).unwrap_err().to_string().contains("positive"));
        assert!(
            retry(r#"{"attempts": 2, "maxRequestBodyBytes": -2}"#)
                .unwrap_err()
                .to_string()
                .contains("maxRequestBodyBytes")
        );
        let r = Retry {
            initial_interval: Some(IntOrString::Str("soon".into())),
            ..serde_json::from_str(r#"{"attempts": 2}"#).unwrap()
        };
        assert!(RetryPolicy::new(&r).unwrap_err().to_string().contains("initialInterval"));
    }
}
