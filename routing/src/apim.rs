//! API management decisions, pure: where a request carries its API key, which application
//! the key belongs to, which subscription (and so which plan) covers that application's
//! call to an API, and whether the plan's rate limit and quota let the call through now.
//!
//! Keys are known only by the SHA-256 of the whole key ([`key_hash`]), looked up in a hash
//! map: no slow hash per request, and a leaked snapshot holds no usable key. The clock is
//! the caller's, and the limit counters ([`Counters`]) are kept by the caller outside the
//! route table, so a configuration swap keeps them.
//!
//! [`Access::from_snapshot`] builds the rules of a snapshot; the data plane asks
//! [`Access::decide`] about every request to a route of an API.

/// Maps looked up on every API request: foldhash, not SipHash (their keys come from the
/// configuration or are SHA-256 outputs, so there is no flooding to defend against).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::time::{Duration, Instant};

pub mod operations;

use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::middleware::limits::{Admission, TokenBucket};

/// The SHA-256 of a whole API key.
pub type KeyHash = [u8; 32];

/// The hash a key is known by.
pub fn key_hash(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// Where a request carries its API key (an APIAuth's `apiKey.keySource`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KeySource {
    /// No `keySource`: `Authorization: Bearer KEY`, or the `api_key` query parameter.
    #[default]
    Default,
    /// A header, with its authentication scheme when one is given (`Authorization:
    /// <scheme> KEY`).
    Header {
        /// The header's name.
        name: http::HeaderName,
        /// The scheme before the key, if any.
        scheme: Option<String>,
    },
    /// A query parameter.
    Query(String),
}

impl KeySource {
    /// The key the request carries, if any (the first one where several are given).
    pub fn find<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
        match self {
            KeySource::Default => {
                bearer(headers, &http::header::AUTHORIZATION, Some("Bearer")).or_else(|| query_value(query, "api_key"))
            }
            KeySource::Header { name, scheme } => bearer(headers, name, scheme.as_deref()),
            KeySource::Query(q) => query_value(query, q),
        }
    }
}

/// The value of header `name`, after `scheme ` (compared case-insensitively) when a scheme
/// is given. Empty values are no key.
fn bearer<'a>(headers: &'a HeaderMap, name: &http::HeaderName, scheme: Option<&str>) -> Option<&'a str> {
    credential(headers.get(name)?.as_bytes(), scheme)
}

/// The credential in a header's raw value: after `scheme ` (compared case-insensitively)
/// when a scheme is given; `None` when the value is not visible ASCII (as
/// `HeaderValue::to_str` reads it), has another scheme, or is empty. One reading for the
/// lanes that see a header map and the one that sees raw header lines.
pub fn credential<'a>(value: &'a [u8], scheme: Option<&str>) -> Option<&'a str> {
    if !value.iter().all(|b| *b == b'\t' || (0x20..0x7f).contains(b)) {
        return None;
    }
    let v = std::str::from_utf8(value).ok()?.trim();
    let key = match scheme {
        None => v,
        Some(s) => {
            let (given, rest) = v.split_once(' ')?;
            if !given.eq_ignore_ascii_case(s) {
                return None;
            }
            rest.trim()
        }
    };
    (!key.is_empty()).then_some(key)
}

/// The first value of query parameter `key`, taken as sent (API keys are URL-safe).
fn query_value<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key && !v.is_empty()).then_some(v)
    })
}

/// Whose requests a plan limit counts together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Bucket {
    /// One counter per subscription (the default).
    #[default]
    Subscription,
    /// One counter per application, whatever subscription or API.
    Application,
    /// One counter per application and API.
    ApplicationApi,
}

/// A rate limit or a quota: `limit` requests per `period`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Requests per period.
    pub limit: u64,
    /// The period.
    pub period: Duration,
    /// Whose requests count together.
    pub bucket: Bucket,
}

/// A plan: its rate limit (a token bucket of `limit` tokens refilled at limit/period) and
/// its quota (a sliding window of `limit` per period).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// `namespace/name`.
    pub id: String,
    /// The rate limit, if any.
    pub rate: Option<Limit>,
    /// The quota, if any.
    pub quota: Option<Limit>,
}

impl Plan {
    /// A snapshot's plan. A limit whose period is zero is left out, as the compiler would
    /// have refused it.
    pub fn from_snapshot(p: &atrium_proto::v1::Plan) -> Plan {
        use atrium_proto::v1 as pb;
        let limit = |l: &Option<pb::PlanLimit>| {
            let l = l.as_ref().filter(|l| l.period_ms > 0)?;
            let bucket = match pb::PlanBucket::try_from(l.bucket) {
                Ok(pb::PlanBucket::Application) => Bucket::Application,
                Ok(pb::PlanBucket::ApplicationApi) => Bucket::ApplicationApi,
                _ => Bucket::Subscription,
            };
            Some(Limit { limit: l.limit, period: Duration::from_millis(l.period_ms), bucket })
        };
        Plan { id: p.id.clone(), rate: limit(&p.rate_limit), quota: limit(&p.quota) }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bucket = match self.bucket {
            Bucket::Subscription => "subscription",
            Bucket::Application => "application",
            Bucket::ApplicationApi => "application-api",
        };
        write!(f, "{} per {:?} (bucket {bucket})", self.limit, self.period)
    }
}

/// An application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    /// Its `appId`.
    pub app_id: String,
    /// A suspended application's keys are refused.
    pub suspended: bool,
}

/// A subscription: applications to APIs, on a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// `namespace/name`.
    pub id: String,
    /// When several cover a request, the highest weight wins (ties: the lower id).
    pub weight: i64,
    /// The `appId`s it covers.
    pub applications: Vec<String>,
    /// The APIs (`namespace/name`) it covers.
    pub apis: Vec<String>,
    /// Its plan.
    pub plan: Plan,
    /// The operation sets it allows (`None`: every operation; empty: none).
    pub operation_filter: Option<Vec<String>>,
}

/// Why an operation is refused to a granted caller.
#[derive(Debug, PartialEq, Eq)]
pub enum OperationRefusal {
    /// The spec defines no operation with this path (404).
    NoPath,
    /// The path's operations have other methods (405): these.
    WrongMethod(Vec<String>),
    /// The subscription's operation filter does not include the operation (403).
    Filtered,
}

/// An API's spec operations and operation sets.
#[derive(Debug, Default)]
struct ApiOperations {
    validate: bool,
    operations: operations::Operations,
    sets: operations::OperationSets,
}

/// What the access rules say about a request to an API.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// No key in the request: 401.
    NoCredentials,
    /// A key no application has: 401.
    UnknownKey,
    /// The key, or its application, is suspended: 403.
    Suspended {
        /// The application.
        app: &'a Application,
        /// Which of the two is suspended.
        what: &'static str,
    },
    /// A valid token naming an application (its `appId`) that no ManagedApplication has:
    /// 403.
    UnknownApplication,
    /// A known application without a subscription to this API: 403.
    NotSubscribed {
        /// The application.
        app: &'a Application,
    },
    /// Let through, within the subscription's plan.
    Granted(Grant<'a>),
}

/// A request an application may make under a subscription.
#[derive(Debug, PartialEq, Eq)]
pub struct Grant<'a> {
    /// The application.
    pub app: &'a Application,
    /// The subscription that covers the request.
    pub subscription: &'a Subscription,
    /// The API (`namespace/name`).
    pub api: &'a str,
}

/// How the callers of an API authenticate.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiAuth {
    /// With an API key, found where the key source says.
    Key(KeySource),
    /// With a JWT (the data plane verifies it; its `appIdClaim` names the application).
    Jwt(Box<atrium_proto::v1::JwtAuth>),
    /// With a method atrium does not implement: every request is refused (401), never
    /// let through.
    Unsupported(String),
}

/// The access rules of a configuration: APIs, keys, applications, subscriptions.
#[derive(Debug, Default)]
pub struct Access {
    /// API (`namespace/name`) → how its callers authenticate.
    apis: HashMap<String, ApiAuth>,
    /// API → its CORS rules, when it has some.
    cors: HashMap<String, crate::middleware::headers::HeaderRules>,
    /// API → its operations and operation sets.
    operations: HashMap<String, ApiOperations>,
    /// Key hash → (application, key suspended).
    keys: HashMap<KeyHash, (usize, bool)>,
    apps: Vec<Application>,
    /// `appId` → position in `apps`.
    by_app_id: HashMap<String, usize>,
    subs: Vec<Subscription>,
    /// API → application → the subscription that wins (looked up by `&str`, no copy).
    grants: HashMap<String, HashMap<usize, usize>>,
}

impl Access {
    /// The rules for `apps`, their keys (hash, `appId`, suspended) and `subs`. Keys of an
    /// unknown application are left out.
    pub fn new(apps: Vec<Application>, keys: Vec<(KeyHash, String, bool)>, subs: Vec<Subscription>) -> Access {
        let by_app_id: HashMap<&str, usize> = apps.iter().enumerate().map(|(i, a)| (a.app_id.as_str(), i)).collect();
        let keys = keys
            .into_iter()
            .filter_map(|(hash, app_id, suspended)| Some((hash, (*by_app_id.get(app_id.as_str())?, suspended))))
            .collect();
        let mut grants: HashMap<String, HashMap<usize, usize>> = HashMap::default();
        for (si, s) in subs.iter().enumerate() {
            for app in s.applications.iter().filter_map(|a| by_app_id.get(a.as_str())) {
                for api in &s.apis {
                    let slot = grants.entry(api.clone()).or_default().entry(*app).or_insert(si);
                    let (cur, new) = (&subs[*slot], s);
                    if new.weight > cur.weight || (new.weight == cur.weight && new.id < cur.id) {
                        *slot = si;
                    }
                }
            }
        }
        let by_app_id = by_app_id.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        Access {
            apis: HashMap::default(),
            cors: HashMap::default(),
            operations: HashMap::default(),
            keys,
            apps,
            by_app_id,
            subs,
            grants,
        }
    }

    /// The rules a snapshot carries. A header name that is not one, or a limit whose
    /// period is zero, is left out as the compiler would have refused it.
    pub fn from_snapshot(body: &atrium_proto::v1::SnapshotBody) -> Access {
        let apps = body.applications.iter().map(|a| Application { app_id: a.app_id.clone(), suspended: a.suspended });
        let keys = body.applications.iter().flat_map(|a| {
            a.keys
                .iter()
                .filter_map(|k| Some((KeyHash::try_from(k.sha256.as_slice()).ok()?, a.app_id.clone(), k.suspended)))
        });
        let subs = body.subscriptions.iter().map(|s| Subscription {
            id: s.id.clone(),
            weight: s.weight,
            applications: s.app_ids.clone(),
            apis: s.apis.clone(),
            plan: s.plan.as_ref().map(Plan::from_snapshot).unwrap_or_default(),
            operation_filter: s.operation_filter.as_ref().map(|f| f.include.clone()),
        });
        let mut access = Access::new(apps.collect(), keys.collect(), subs.collect());
        access.apis = body.apis.iter().map(|a| (a.id.clone(), api_auth(a.auth.as_ref()))).collect();
        access.operations = body
            .apis
            .iter()
            .map(|a| {
                let ops = ApiOperations {
                    validate: a.validate_method_and_path,
                    operations: operations::Operations::from_snapshot(&a.operations, &a.spec_base_paths),
                    sets: operations::OperationSets::from_snapshot(&a.operation_sets),
                };
                (a.id.clone(), ops)
            })
            .collect();
        access.cors = body
            .apis
            .iter()
            .filter(|a| !a.cors_json.is_empty())
            .filter_map(|a| {
                let cfg = serde_json::from_str(&a.cors_json).ok()?;
                Some((a.id.clone(), crate::middleware::headers::HeaderRules::new(cfg).ok()?))
            })
            .collect();
        access
    }

    /// Whether the operation `method path` of `grant`'s API is one the caller may make: one
    /// the spec defines (when the API validates method and path and its spec is known), and
    /// one the subscription's operation filter includes. The filter matches the operation's
    /// path template when the spec knows it, the request's path otherwise.
    pub fn check_operation(&self, grant: &Grant<'_>, method: &str, path: &str) -> Result<(), OperationRefusal> {
        let Some(api) = self.operations.get(grant.api) else {
            return match &grant.subscription.operation_filter {
                Some(_) => Err(OperationRefusal::Filtered),
                None => Ok(()),
            };
        };
        let found = if api.operations.is_empty() { None } else { Some(api.operations.find(method, path)) };
        let template = match found {
            Some(operations::Found::Operation(t)) => t,
            Some(operations::Found::WrongMethod(m)) if api.validate => {
                return Err(OperationRefusal::WrongMethod(m.into_iter().map(str::to_string).collect()));
            }
            Some(operations::Found::NoPath) if api.validate => return Err(OperationRefusal::NoPath),
            _ => path,
        };
        match &grant.subscription.operation_filter {
            Some(include) if !api.sets.allows(include, method, template) => Err(OperationRefusal::Filtered),
            _ => Ok(()),
        }
    }

    /// The CORS rules of `api`, if it has some.
    pub fn cors(&self, api: &str) -> Option<&crate::middleware::headers::HeaderRules> {
        self.cors.get(api)
    }

    /// How callers of `api` authenticate; `None` for an API the rules do not know (its
    /// requests are refused).
    pub fn auth(&self, api: &str) -> Option<&ApiAuth> {
        self.apis.get(api)
    }

    /// The verdict on a request to `api` carrying `key`.
    pub fn decide<'a>(&'a self, api: &'a str, key: Option<&str>) -> Verdict<'a> {
        let Some(key) = key else { return Verdict::NoCredentials };
        let Some(&(ai, key_suspended)) = self.keys.get(&key_hash(key)) else { return Verdict::UnknownKey };
        self.verdict(api, ai, key_suspended)
    }

    /// The verdict on a request to `api` by the application whose `appId` a verified token
    /// names.
    pub fn decide_app<'a>(&'a self, api: &'a str, app_id: &str) -> Verdict<'a> {
        match self.by_app_id.get(app_id) {
            Some(&ai) => self.verdict(api, ai, false),
            None => Verdict::UnknownApplication,
        }
    }

    fn verdict<'a>(&'a self, api: &'a str, ai: usize, key_suspended: bool) -> Verdict<'a> {
        let app = &self.apps[ai];
        if app.suspended || key_suspended {
            return Verdict::Suspended { app, what: if app.suspended { "application" } else { "API key" } };
        }
        match self.grants.get(api).and_then(|by_app| by_app.get(&ai)) {
            Some(&si) => Verdict::Granted(Grant { app, subscription: &self.subs[si], api }),
            None => Verdict::NotSubscribed { app },
        }
    }
}

/// The rule of a snapshot's API authentication.
fn api_auth(auth: Option<&atrium_proto::v1::api::Auth>) -> ApiAuth {
    use atrium_proto::v1::api::Auth;
    match auth {
        Some(Auth::ApiKey(k)) if !k.header.is_empty() => match http::HeaderName::try_from(k.header.as_str()) {
            Ok(name) => ApiAuth::Key(KeySource::Header {
                name,
                scheme: (!k.header_auth_scheme.is_empty()).then(|| k.header_auth_scheme.clone()),
            }),
            Err(_) => ApiAuth::Unsupported(format!("keySource.header {:?} is not a header name", k.header)),
        },
        Some(Auth::ApiKey(k)) if !k.query.is_empty() => ApiAuth::Key(KeySource::Query(k.query.clone())),
        Some(Auth::ApiKey(_)) => ApiAuth::Key(KeySource::Default),
        Some(Auth::Jwt(j)) => ApiAuth::Jwt(Box::new(j.clone())),
        Some(Auth::Unsupported(why)) => ApiAuth::Unsupported(why.clone()),
        None => ApiAuth::Unsupported("the API has no authentication".into()),
    }
}

/// What the plan limits say about one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// Go now, after a wait, or refused (429 with `Retry-After`).
    pub admission: Admission,
    /// Requests left in the rate limit's bucket (`X-RateLimit-Remaining`).
    pub rate_remaining: Option<u64>,
    /// Requests left in the quota's window (`X-Quota-Remaining`).
    pub quota_remaining: Option<u64>,
}

/// A sliding window: the count of the current fixed window, plus the previous one's
/// weighted by how much of it the sliding window still covers.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    current: u64,
    previous: u64,
}

impl Window {
    /// Moves the window to `now`; the estimated count of the last `period`.
    fn estimate(&mut self, period: Duration, now: Instant) -> f64 {
        let mut elapsed = now.saturating_duration_since(self.start);
        if elapsed >= period {
            let windows = (elapsed.as_nanos() / period.as_nanos().max(1)) as u32;
            self.previous = if windows == 1 { self.current } else { 0 };
            self.current = 0;
            self.start += period * windows;
            elapsed = now.saturating_duration_since(self.start);
        }
        let uncovered = elapsed.as_secs_f64() / period.as_secs_f64();
        self.previous as f64 * (1.0 - uncovered) + self.current as f64
    }
}

/// The counters of plan limits, one per bucket; the caller keeps them across
/// configuration swaps.
#[derive(Debug, Default)]
pub struct Counters {
    /// Token buckets, with their refill rate (per second) and size.
    rate: HashMap<String, (TokenBucket, f64, f64)>,
    /// Quota windows, with their period.
    quota: HashMap<String, (Window, Duration)>,
}

/// The name of the counter of `limit` (`kind`: rate or quota) for `grant`: the plan, and
/// the subscription, application or application and API whose requests count together.
pub fn bucket_key(kind: &str, limit: &Limit, grant: &Grant<'_>) -> String {
    // Built by hand: `format!` costs several times as much, on every API request.
    let plan = grant.subscription.plan.id.as_str();
    let (tag, parts): (&str, [&str; 2]) = match limit.bucket {
        Bucket::Subscription => ("s", [grant.subscription.id.as_str(), ""]),
        Bucket::Application => ("a", [grant.app.app_id.as_str(), ""]),
        Bucket::ApplicationApi => ("aa", [grant.app.app_id.as_str(), grant.api]),
    };
    let mut key = String::with_capacity(kind.len() + plan.len() + parts[0].len() + parts[1].len() + 8);
    for p in [kind, "|", plan, "|", tag, "|", parts[0]] {
        key.push_str(p);
    }
    if !parts[1].is_empty() {
        key.push('|');
        key.push_str(parts[1]);
    }
    key
}

impl Counters {
    /// Counts a request under `grant` at `now`: the quota is checked first (a refused
    /// request spends no rate token), then the rate limit, which may ask for a wait of at
    /// most `max_delay`; an admitted request counts against both.
    pub fn admit(&mut self, grant: &Grant<'_>, now: Instant, max_delay: Duration) -> Outcome {
        let plan = &grant.subscription.plan;
        let mut out = Outcome { admission: Admission::Now, rate_remaining: None, quota_remaining: None };
        let quota = plan.quota.as_ref().map(|q| {
            let fresh = (Window { start: now, current: 0, previous: 0 }, q.period);
            let (w, _) = self.quota.entry(bucket_key("quota", q, grant)).or_insert(fresh);
            let used = w.estimate(q.period, now);
            (q, w, used)
        });
        if let Some((q, w, used)) = &quota {
            if used + 1.0 > q.limit as f64 {
                out.quota_remaining = Some(0);
                let retry = q.period.saturating_sub(now.saturating_duration_since(w.start));
                out.admission = Admission::Refuse(retry.max(Duration::from_secs(1)));
                return out;
            }
        }
        if let Some(r) = &plan.rate {
            let (rate, burst) = (r.limit as f64 / r.period.as_secs_f64(), r.limit as f64);
            let fresh = (TokenBucket::full(burst, now), rate, burst);
            let (b, _, _) = self.rate.entry(bucket_key("rate", r, grant)).or_insert(fresh);
            out.admission = b.take(rate, burst, max_delay, now);
            out.rate_remaining = Some(b.remaining(rate, burst, now));
        }
        if let Some((q, w, used)) = quota {
            if !matches!(out.admission, Admission::Refuse(_)) {
                w.current += 1;
                out.quota_remaining = Some(q.limit.saturating_sub((used + 1.0).ceil() as u64));
            } else {
                out.quota_remaining = Some(q.limit.saturating_sub(used.ceil() as u64));
            }
        }
        out
    }

    /// What is left of `grant`'s plan at `now`, without counting anything: requests left in
    /// the rate limit's bucket and in the quota's window (none: the plan has no such limit).
    pub fn peek(&self, grant: &Grant<'_>, now: Instant) -> (Option<u64>, Option<u64>) {
        let plan = &grant.subscription.plan;
        let rate = plan.rate.as_ref().map(|r| match self.rate.get(&bucket_key("rate", r, grant)) {
            Some((b, rate, burst)) => b.remaining(*rate, *burst, now),
            None => r.limit,
        });
        let quota = plan.quota.as_ref().map(|q| match self.quota.get(&bucket_key("quota", q, grant)) {
            Some((w, period)) => {
                let mut w = *w;
                q.limit.saturating_sub(w.estimate(*period, now).ceil() as u64)
            }
            None => q.limit,
        });
        (rate, quota)
    }

    /// Forgets the counters that carry no state at `now`: rate buckets that have filled up
    /// again, and quota windows with nothing counted in the last two periods.
    pub fn evict_idle(&mut self, now: Instant) {
        self.rate.retain(|_, (b, rate, burst)| !b.is_full(*rate, *burst, now));
        self.quota.retain(|_, (w, period)| now.saturating_duration_since(w.start) < *period * 2);
    }

    /// How many counters are kept.
    pub fn len(&self) -> usize {
        self.rate.len() + self.quota.len()
    }

    /// Whether no counter is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(limit: u64, secs: u64, bucket: Bucket) -> Limit {
        Limit { limit, period: Duration::from_secs(secs), bucket }
    }

    fn plan(id: &str, rate: Option<Limit>, quota: Option<Limit>) -> Plan {
        Plan { id: id.into(), rate, quota }
    }

    fn sub(id: &str, weight: i64, apps: &[&str], apis: &[&str], plan: Plan) -> Subscription {
        Subscription {
            id: id.into(),
            weight,
            applications: apps.iter().map(|s| s.to_string()).collect(),
            apis: apis.iter().map(|s| s.to_string()).collect(),
            plan,
            operation_filter: None,
        }
    }

    fn app(id: &str) -> Application {
        Application { app_id: id.into(), suspended: false }
    }

    fn access(subs: Vec<Subscription>) -> Access {
        let keys = vec![
            (key_hash("key-a"), "app-a".to_string(), false),
            (key_hash("key-b"), "app-b".to_string(), false),
            (key_hash("key-old"), "app-a".to_string(), true),
        ];
        Access::new(vec![app("app-a"), app("app-b")], keys, subs)
    }

    #[test]
    fn peek_tells_what_is_left_without_counting() {
        let a = access(vec![sub(
            "s",
            0,
            &["app-a"],
            &["crm"],
            plan("p", Some(limit(10, 60, Bucket::Subscription)), Some(limit(100, 3600, Bucket::Subscription))),
        )]);
        let g = granted(&a, "crm", "key-a");
        let mut c = Counters::default();
        let now = Instant::now();
        assert_eq!(c.peek(&g, now), (Some(10), Some(100)), "nothing counted yet");
        for _ in 0..3 {
            c.admit(&g, now, Duration::ZERO);
        }
        assert_eq!(c.peek(&g, now), (Some(7), Some(97)));
        assert_eq!(c.peek(&g, now), (Some(7), Some(97)), "peeking counts nothing");
    }

    fn granted<'a>(a: &'a Access, api: &'a str, key: &str) -> Grant<'a> {
        match a.decide(api, Some(key)) {
            Verdict::Granted(g) => g,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keys_are_found_where_the_key_source_says_and_nowhere_else() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer k1".parse().unwrap());
        assert_eq!(KeySource::Default.find(&h, Some("api_key=k2")), Some("k1"));
        assert_eq!(KeySource::Default.find(&HeaderMap::new(), Some("x=1&api_key=k2")), Some("k2"));
        assert_eq!(KeySource::Default.find(&HeaderMap::new(), Some("api_key=")), None);
        let header = KeySource::Header { name: http::HeaderName::from_static("x-api-key"), scheme: None };
        assert_eq!(header.find(&h, Some("api_key=k2")), None, "a given key source replaces both defaults");
        h.insert("x-api-key", "k3".parse().unwrap());
        assert_eq!(header.find(&h, None), Some("k3"));
        let query = KeySource::Query("token".into());
        assert_eq!(query.find(&h, Some("api_key=k2&token=k4")), Some("k4"));
        let mut basic = HeaderMap::new();
        basic.insert("authorization", "Basic k1".parse().unwrap());
        assert_eq!(KeySource::Default.find(&basic, None), None, "another scheme is no bearer key");
    }

    #[test]
    fn raw_header_values_are_read_as_header_maps_read_them() {
        assert_eq!(credential(b"Bearer k1", Some("Bearer")), Some("k1"));
        assert_eq!(credential(b"bearer   k1  ", Some("Bearer")), Some("k1"));
        assert_eq!(credential(b"Basic k1", Some("Bearer")), None);
        assert_eq!(credential(b"Bearer ", Some("Bearer")), None);
        assert_eq!(credential("Bearer k\u{e9}".as_bytes(), Some("Bearer")), None, "not visible ASCII: no key");
        assert_eq!(credential(b"k1", None), Some("k1"));
        let mut h = HeaderMap::new();
        h.insert("authorization", http::HeaderValue::from_bytes("Bearer k\u{e9}".as_bytes()).unwrap());
        assert_eq!(KeySource::Default.find(&h, None), None, "the header map reads it the same way");
    }

    #[test]
    fn unknown_suspended_and_unsubscribed_keys_get_their_own_verdicts() {
        let a = access(vec![sub("ns/s", 0, &["app-a"], &["ns/crm"], plan("ns/p", None, None))]);
        assert_eq!(a.decide("ns/crm", None), Verdict::NoCredentials);
        assert_eq!(a.decide("ns/crm", Some("nope")), Verdict::UnknownKey);
        assert!(matches!(a.decide("ns/crm", Some("key-old")), Verdict::Suspended { what: "API key", .. }));
        assert!(matches!(a.decide("ns/crm", Some("key-b")), Verdict::NotSubscribed { .. }));
        assert!(matches!(a.decide("ns/billing", Some("key-a")), Verdict::NotSubscribed { .. }));
        assert_eq!(granted(&a, "ns/crm", "key-a").subscription.id, "ns/s");
        let suspended = Access::new(
            vec![Application { app_id: "app-a".into(), suspended: true }],
            vec![(key_hash("key-a"), "app-a".into(), false)],
            vec![],
        );
        assert!(matches!(suspended.decide("ns/crm", Some("key-a")), Verdict::Suspended { what: "application", .. }));
    }

    #[test]
    fn the_heaviest_subscription_wins_and_ties_go_to_the_lower_name() {
        let p = |id: &str| plan(id, None, None);
        let a = access(vec![
            sub("ns/b-standard", 1, &["app-a"], &["ns/crm"], p("ns/standard")),
            sub("ns/a-premium", 5, &["app-a"], &["ns/crm"], p("ns/premium")),
            sub("ns/c-tie", 5, &["app-a"], &["ns/crm"], p("ns/other")),
        ]);
        assert_eq!(granted(&a, "ns/crm", "key-a").subscription.plan.id, "ns/premium");
    }

    #[test]
    fn a_rate_limit_accepts_exactly_its_limit_per_window_then_refuses_with_a_wait() {
        let a = access(vec![sub(
            "ns/s",
            0,
            &["app-a"],
            &["ns/crm"],
            plan("ns/p", Some(limit(100, 60, Bucket::Subscription)), None),
        )]);
        let g = granted(&a, "ns/crm", "key-a");
        let (mut c, t0) = (Counters::default(), Instant::now());
        for i in 0..100 {
            let o = c.admit(&g, t0, Duration::ZERO);
            assert_eq!(o.admission, Admission::Now, "request {i}");
            assert_eq!(o.rate_remaining, Some(99 - i));
        }
        match c.admit(&g, t0, Duration::ZERO).admission {
            Admission::Refuse(d) => assert!((d.as_secs_f64() - 0.6).abs() < 0.01, "{d:?}"),
            other => panic!("{other:?}"),
        }
        // 0.6 s later one token is back; a short wait is offered when it fits.
        assert_eq!(c.admit(&g, t0 + Duration::from_millis(600), Duration::ZERO).admission, Admission::Now);
        assert!(matches!(
            c.admit(&g, t0 + Duration::from_millis(900), Duration::from_secs(1)).admission,
            Admission::After(_)
        ));
    }

    #[test]
    fn a_quota_is_a_sliding_window() {
        let a = access(vec![sub(
            "ns/s",
            0,
            &["app-a"],
            &["ns/crm"],
            plan("ns/p", None, Some(limit(10, 3600, Bucket::Subscription))),
        )]);
        let g = granted(&a, "ns/crm", "key-a");
        let (mut c, t0) = (Counters::default(), Instant::now());
        for i in 0..10 {
            let o = c.admit(&g, t0 + Duration::from_secs(i), Duration::ZERO);
            assert_eq!((o.admission, o.quota_remaining), (Admission::Now, Some(9 - i)));
        }
        assert!(matches!(c.admit(&g, t0 + Duration::from_secs(60), Duration::ZERO).admission, Admission::Refuse(_)));
        // Half-way through the next hour, half of the last hour's ten still count.
        let mid = t0 + Duration::from_secs(3600 + 1800);
        for _ in 0..5 {
            assert_eq!(c.admit(&g, mid, Duration::ZERO).admission, Admission::Now);
        }
        assert!(matches!(c.admit(&g, mid, Duration::ZERO).admission, Admission::Refuse(_)));
        // Two hours on, the window is empty again.
        assert_eq!(c.admit(&g, t0 + Duration::from_secs(3 * 3600), Duration::ZERO).quota_remaining, Some(9));
    }

    #[test]
    fn buckets_count_by_subscription_application_or_application_and_api() {
        let one = |bucket| {
            let a = access(vec![
                sub("ns/s1", 0, &["app-a", "app-b"], &["ns/crm"], plan("ns/p", Some(limit(2, 60, bucket)), None)),
                sub("ns/s2", 0, &["app-a", "app-b"], &["ns/billing"], plan("ns/p", Some(limit(2, 60, bucket)), None)),
            ]);
            let (mut c, t0) = (Counters::default(), Instant::now());
            let mut ok = |api: &str, key: &str| {
                let g = granted(&a, api, key);
                c.admit(&g, t0, Duration::ZERO).admission == Admission::Now
            };
            // Three calls each from app-a to crm, app-b to crm, app-a to billing.
            [
                (0..3).filter(|_| ok("ns/crm", "key-a")).count(),
                (0..3).filter(|_| ok("ns/crm", "key-b")).count(),
                (0..3).filter(|_| ok("ns/billing", "key-a")).count(),
            ]
        };
        assert_eq!(one(Bucket::Subscription), [2, 0, 2], "crm's subscription is shared by both applications");
        assert_eq!(one(Bucket::Application), [2, 2, 0], "app-a's calls count together across APIs");
        assert_eq!(one(Bucket::ApplicationApi), [2, 2, 2]);
    }

    #[test]
    fn bucket_keys_name_the_plan_and_whose_requests_count_together() {
        let p = plan("ns/p", None, None);
        let a = access(vec![sub("ns/s", 0, &["app-a"], &["ns/crm"], p)]);
        let g = granted(&a, "ns/crm", "key-a");
        let key = |bucket| bucket_key("rate", &limit(1, 1, bucket), &g);
        assert_eq!(key(Bucket::Subscription), "rate|ns/p|s|ns/s");
        assert_eq!(key(Bucket::Application), "rate|ns/p|a|app-a");
        assert_eq!(key(Bucket::ApplicationApi), "rate|ns/p|aa|app-a|ns/crm");
    }

    #[test]
    fn idle_counters_are_forgotten_and_busy_ones_kept() {
        let p = plan("ns/p", Some(limit(10, 10, Bucket::Subscription)), Some(limit(100, 60, Bucket::Subscription)));
        let a = access(vec![sub("ns/s", 0, &["app-a"], &["ns/crm"], p)]);
        let (mut c, t0) = (Counters::default(), Instant::now());
        c.admit(&granted(&a, "ns/crm", "key-a"), t0, Duration::ZERO);
        assert_eq!(c.len(), 2);
        c.evict_idle(t0 + Duration::from_millis(500));
        assert_eq!(c.len(), 2, "a bucket still refilling and a window in use are kept");
        c.evict_idle(t0 + Duration::from_secs(5));
        assert_eq!(c.len(), 1, "the rate bucket is full again: nothing to keep");
        c.evict_idle(t0 + Duration::from_secs(121));
        assert!(c.is_empty(), "nothing counted in the last two quota periods");
    }

    #[test]
    fn counts_survive_new_access_rules() {
        let build = || {
            access(vec![sub(
                "ns/s",
                0,
                &["app-a"],
                &["ns/crm"],
                plan("ns/p", Some(limit(3, 60, Bucket::Subscription)), None),
            )])
        };
        let (mut c, t0) = (Counters::default(), Instant::now());
        let old = build();
        for _ in 0..3 {
            assert_eq!(c.admit(&granted(&old, "ns/crm", "key-a"), t0, Duration::ZERO).admission, Admission::Now);
        }
        // A new configuration with the same plan and subscription: the count goes on.
        let new = build();
        drop(old);
        assert!(matches!(
            c.admit(&granted(&new, "ns/crm", "key-a"), t0, Duration::ZERO).admission,
            Admission::Refuse(_)
        ));
    }
}
