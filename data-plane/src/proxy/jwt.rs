//! JWT authentication of API routes (an APIAuth's `jwt`): the token comes from
//! `Authorization: Bearer` (or the `tokenQueryKey` parameter), its signature is checked
//! with the configured keys (an HMAC secret, a PEM public key, a JWKS document, or JWKS
//! fetched from URLs, per trusted issuer), `exp` is required and enforced, `nbf` enforced
//! when present (a claim of the wrong type is refused, never skipped), and the
//! `appIdClaim` names the application.
//!
//! JWKS are fetched off the request path: when a configuration arrives, and again every
//! five minutes in the background. A token whose `kid` is unknown triggers one refresh
//! (at most one per URL every ten seconds, however many such tokens arrive, so a rotated
//! key works at once and random kids cannot make the gateway hammer the issuer), which
//! that request waits for within the fetch timeout. `alg: none` never verifies; a key only
//! verifies the algorithms of its own family, so an RSA public key can never be used as
//! an HMAC secret.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use atrium_proto::v1 as pb;
use http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::fetch::Fetcher;

/// JWKS older than this are refetched in the background.
const JWKS_MAX_AGE: Duration = Duration::from_secs(300);
/// An unknown `kid` refetches a JWKS at most this often.
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(10);
/// Largest JWKS document.
const JWKS_MAX_BYTES: usize = 1 << 20;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 5;

/// A key that may verify tokens, with the algorithms it verifies.
struct VerifyingKey {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// Where an API's keys come from.
enum Keys {
    /// Known from the configuration.
    Fixed(Vec<VerifyingKey>),
    /// JWKS sources, each with the issuer its tokens must name (`None`: any issuer).
    Remote(Vec<(Option<String>, JwksSource)>),
    /// The configured keys do not load: every token is refused.
    Broken(String),
}

/// The JWT rules of one API, compiled.
pub(crate) struct JwtCheck {
    rules: pb::JwtAuth,
    keys: Keys,
}

impl std::fmt::Debug for JwtCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtCheck").field("app_id_claim", &self.rules.app_id_claim).finish_non_exhaustive()
    }
}

/// A verified token: its claims.
pub(crate) type Claims = Map<String, Value>;

/// Where a request carried its token.
pub(crate) enum TokenAt {
    /// `Authorization: Bearer`.
    Header,
    /// The query parameter of this name.
    Query(String),
}

impl JwtCheck {
    /// Compiles `rules`; keys that do not load make every token fail (with the reason
    /// logged here), never pass.
    pub(crate) fn new(api: &str, rules: &pb::JwtAuth) -> JwtCheck {
        use pb::jwt_auth::Keys as K;
        let keys = match &rules.keys {
            Some(K::HmacSecret(s)) => Keys::Fixed(vec![VerifyingKey {
                kid: None,
                key: DecodingKey::from_secret(s),
                algorithms: vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            }]),
            Some(K::PublicKeyPem(pem)) => match public_key(pem.as_bytes()) {
                Ok(k) => Keys::Fixed(vec![k]),
                Err(e) => Keys::Broken(e),
            },
            Some(K::JwksJson(doc)) => match parse_jwks(doc.as_bytes(), true) {
                Ok(keys) if !keys.is_empty() => Keys::Fixed(keys),
                Ok(_) => Keys::Broken("jwksFile holds no usable signing key".into()),
                Err(e) => Keys::Broken(e),
            },
            Some(K::JwksUrls(s)) => {
                match Fetcher::new(&rules.ca_pem, Duration::from_millis(rules.timeout_ms.max(1)), JWKS_MAX_BYTES) {
                    Ok(fetcher) => Keys::Remote(
                        s.issuers
                            .iter()
                            .map(|t| {
                                let source = JwksSource {
                                    url: t.jwks_url.clone(),
                                    fetcher: fetcher.clone(),
                                    retries: rules.max_retries,
                                    cache_key: format!("{}\n{}", t.jwks_url, rules.ca_pem),
                                };
                                ((!t.issuer.is_empty()).then(|| t.issuer.clone()), source)
                            })
                            .collect(),
                    ),
                    Err(e) => Keys::Broken(e.to_string()),
                }
            }
            None => Keys::Broken("no keys configured".into()),
        };
        if let Keys::Broken(why) = &keys {
            tracing::error!(api, error = %why, "JWT keys do not load: every token for this API is refused");
        }
        JwtCheck { rules: rules.clone(), keys }
    }

    /// The claim that names the application.
    pub(crate) fn app_id_claim(&self) -> &str {
        &self.rules.app_id_claim
    }

    /// Headers set from claims: header → claim.
    pub(crate) fn forward_headers(&self) -> &HashMap<String, String> {
        &self.rules.forward_headers
    }

    /// The query parameter that may carry a token (empty: none); always taken out.
    pub(crate) fn token_query_key(&self) -> &str {
        &self.rules.token_query_key
    }

    /// Whether `Authorization` is taken out before the request goes upstream.
    pub(crate) fn strip_authorization(&self) -> bool {
        self.rules.strip_authorization_header
    }

    /// The token a request carries, and where.
    pub(crate) fn token<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> Option<(&'a str, TokenAt)> {
        let header = atrium_routing::apim::KeySource::Header {
            name: http::header::AUTHORIZATION,
            scheme: Some("Bearer".into()),
        };
        if let Some(t) = header.find(headers, None) {
            return Some((t, TokenAt::Header));
        }
        let q = &self.rules.token_query_key;
        if q.is_empty() {
            return None;
        }
        atrium_routing::apim::KeySource::Query(q.clone()).find(headers, query).map(|t| (t, TokenAt::Query(q.clone())))
    }

    /// Every JWKS source, to fetch ahead of requests.
    pub(crate) fn jwks_sources(&self) -> Vec<JwksSource> {
        match &self.keys {
            Keys::Remote(list) => list.iter().map(|(_, s)| s.clone()).collect(),
            _ => Vec::new(),
        }
    }

    /// Verifies `token`; its claims, or why it is refused.
    pub(crate) async fn verify(&self, token: &str, jwks: &JwksCache) -> Result<Claims, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {}", reason(&e)))?;
        match &self.keys {
            Keys::Broken(why) => Err(format!("the API's JWT keys do not load ({why})")),
            Keys::Fixed(keys) => verify_with(token, &header, keys, None),
            Keys::Remote(sources) => {
                let iss = unverified_issuer(token);
                let source = sources
                    .iter()
                    .find(|(i, _)| i.is_some() && i.as_deref() == iss.as_deref())
                    .or_else(|| sources.iter().find(|(i, _)| i.is_none()))
                    .ok_or_else(|| "the token's issuer is not trusted".to_string())?;
                let (issuer, source) = (source.0.as_deref(), &source.1);
                let keys = jwks.keys(source, None).await?;
                let known = header.kid.as_deref().is_none_or(|kid| keys.iter().any(|k| k.kid.as_deref() == Some(kid)));
                let keys = if known { keys } else { jwks.keys(source, header.kid.as_deref()).await? };
                verify_with(token, &header, &keys, issuer)
            }
        }
    }
}

/// The `iss` of a token, read before verification only to choose which JWKS verifies it.
fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_string)
}

fn verify_with(
    token: &str,
    header: &jsonwebtoken::Header,
    keys: &[VerifyingKey],
    issuer: Option<&str>,
) -> Result<Claims, String> {
    let candidates: Vec<&VerifyingKey> = keys
        .iter()
        .filter(|k| k.algorithms.contains(&header.alg))
        .filter(|k| match (&header.kid, &k.kid) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        })
        .collect();
    if candidates.is_empty() {
        return Err(match &header.kid {
            Some(kid) => format!("no key {kid:?} for algorithm {:?}", header.alg),
            None => format!("no key for algorithm {:?}", header.alg),
        });
    }
    let mut validation = Validation::new(header.alg);
    validation.leeway = LEEWAY_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp"]);
    if let Some(iss) = issuer {
        validation.set_issuer(&[iss]);
    }
    let mut last = String::new();
    for k in candidates {
        match jsonwebtoken::decode::<Claims>(token, &k.key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => last = reason(&e),
        }
    }
    Err(last)
}

/// A user-facing reason for a refused token.
fn reason(e: &jsonwebtoken::errors::Error) -> String {
    match e.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => "the token's issuer is not trusted".into(),
        ErrorKind::InvalidSignature => "invalid signature".into(),
        ErrorKind::InvalidAlgorithm => "algorithm not allowed for this key".into(),
        ErrorKind::InvalidToken => "not a JWT".into(),
        ErrorKind::InvalidClaimFormat(c) => format!("claim {c} has the wrong type"),
        _ => e.to_string(),
    }
}

/// A PEM public key (RSA, EC or Ed25519).
fn public_key(pem: &[u8]) -> Result<VerifyingKey, String> {
    use Algorithm::*;
    let (key, algorithms) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        (k, vec![RS256, RS384, RS512, PS256, PS384, PS512])
    } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        (k, vec![ES256, ES384])
    } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        (k, vec![EdDSA])
    } else {
        return Err("publicKey is not an RSA, EC or Ed25519 public key in PEM".into());
    };
    Ok(VerifyingKey { kid: None, key, algorithms })
}

/// The signing keys of a JWKS document; keys that do not load, are for encryption, name an
/// algorithm that is not a signing one of their family, or (unless `symmetric`: a local
/// `jwksFile`) are symmetric secrets, which a JWKS anyone can fetch must never hold, are
/// left out.
fn parse_jwks(doc: &[u8], symmetric: bool) -> Result<Vec<VerifyingKey>, String> {
    let v: Value = serde_json::from_slice(doc).map_err(|e| format!("not a JWKS document: {e}"))?;
    let list = v.get("keys").and_then(Value::as_array).ok_or("not a JWKS document: no `keys` list")?;
    Ok(list
        .iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
        .filter(|jwk| !matches!(jwk.common.public_key_use, Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)))
        .filter_map(|jwk| {
            use Algorithm::*;
            let key = DecodingKey::from_jwk(&jwk).ok()?;
            let by_family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
                AlgorithmParameters::EllipticCurve(_) => vec![ES256, ES384],
                AlgorithmParameters::OctetKeyPair(_) => vec![EdDSA],
                AlgorithmParameters::OctetKey(_) if symmetric => vec![HS256, HS384, HS512],
                AlgorithmParameters::OctetKey(_) => return None,
            };
            let algorithms = match jwk.common.key_algorithm {
                None => by_family,
                Some(a) => match a.to_string().parse::<Algorithm>() {
                    Ok(a) if by_family.contains(&a) => vec![a],
                    _ => return None,
                },
            };
            Some(VerifyingKey { kid: jwk.common.key_id.clone(), key, algorithms })
        })
        .collect())
}

/// Where one JWKS comes from: its URL and how it is fetched. Cached by URL and CA bundle,
/// so APIs that trust different CAs for the same URL never share (or spoil) one entry.
#[derive(Clone)]
pub(crate) struct JwksSource {
    url: String,
    fetcher: Fetcher,
    retries: u32,
    cache_key: String,
}

/// JWKS by source, kept across configuration swaps.
#[derive(Default)]
pub(crate) struct JwksCache {
    entries: Mutex<HashMap<String, Arc<Jwks>>>,
}

/// One source's keys.
#[derive(Default)]
struct Jwks {
    keys: RwLock<Option<Arc<Vec<VerifyingKey>>>>,
    /// When keys were last fetched successfully.
    fetched: Mutex<Option<Instant>>,
    /// When an unknown `kid` last made it fetch.
    forced: Mutex<Option<Instant>>,
    /// A background refresh is under way (at most one).
    refreshing: std::sync::atomic::AtomicBool,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl JwksSource {
    /// What the cache knows it by.
    pub(crate) fn cache_key(&self) -> &str {
        &self.cache_key
    }
}

impl JwksCache {
    fn entry(&self, source: &JwksSource) -> Arc<Jwks> {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.entry(source.cache_key.clone()).or_default().clone()
    }

    /// Fetches `source` in the background (with its retries), unless a background fetch is
    /// already under way or the keys are fresh.
    pub(crate) fn prefetch(self: &Arc<Self>, source: &JwksSource) {
        self.refresh_in_background(&self.entry(source), source, JWKS_MIN_REFRESH);
    }

    fn refresh_in_background(&self, entry: &Arc<Jwks>, source: &JwksSource, min_age: Duration) {
        use std::sync::atomic::Ordering;
        if entry.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (entry, source) = (entry.clone(), source.clone());
        tokio::spawn(async move {
            let _ = fetch_into(&entry, &source, source.retries, min_age).await;
            entry.refreshing.store(false, Ordering::Release);
        });
    }

    /// Forgets the sources not in `keep` (cache keys).
    pub(crate) fn retain(&self, keep: &HashSet<String>) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| keep.contains(k));
    }

    /// The keys of `source`: fetched if there are none yet, or fetched first when `kid` is
    /// asked for and missing (at most once per [`JWKS_MIN_REFRESH`]). A request waits for
    /// one attempt at most (retries happen in the background); stale keys are refreshed in
    /// the background.
    async fn keys(&self, source: &JwksSource, kid: Option<&str>) -> Result<Arc<Vec<VerifyingKey>>, String> {
        let entry = self.entry(source);
        let current = entry.keys.read().ok().and_then(|k| k.clone());
        if let (Some(keys), None) = (&current, kid) {
            let stale = entry.fetched.lock().ok().and_then(|f| *f).is_none_or(|t| t.elapsed() > JWKS_MAX_AGE);
            if stale {
                self.refresh_in_background(&entry, source, JWKS_MAX_AGE);
            }
            return Ok(keys.clone());
        }
        let min_age = if kid.is_some() {
            // An unknown kid fetches at once, unless another one did moments ago.
            let go = {
                let mut forced = entry.forced.lock().unwrap_or_else(|p| p.into_inner());
                let go = forced.is_none_or(|t| t.elapsed() >= JWKS_MIN_REFRESH);
                if go {
                    *forced = Some(Instant::now());
                }
                go
            };
            if !go {
                return current.ok_or_else(|| format!("JWKS {} is not available", source.url));
            }
            Duration::ZERO
        } else {
            JWKS_MIN_REFRESH
        };
        // One attempt, and no longer than a fetch may take (plus waiting for a fetch under
        // way): the request is not held for a whole retry cycle.
        let wait = source.fetcher.timeout * 2;
        match tokio::time::timeout(wait, fetch_into(&entry, source, 0, min_age)).await {
            Ok(r) => r,
            Err(_) => current.ok_or_else(|| format!("JWKS {} is not available yet", source.url)),
        }
    }
}

/// Fetches `source` into `entry` unless it was fetched less than `min_age` ago (then the
/// keys in hand are returned); one fetch at a time per source, retried `retries` times with
/// backoff. A failure keeps the keys in hand.
async fn fetch_into(
    entry: &Jwks,
    source: &JwksSource,
    retries: u32,
    min_age: Duration,
) -> Result<Arc<Vec<VerifyingKey>>, String> {
    let url = source.url.as_str();
    let asked = Instant::now();
    let _one = entry.fetching.lock().await;
    // A fetch that finished while this one waited for its turn is as good as a new one.
    let recent = entry.fetched.lock().ok().and_then(|f| *f).is_some_and(|t| t.elapsed() < min_age || t > asked);
    let current = entry.keys.read().ok().and_then(|k| k.clone());
    if recent {
        return current.ok_or_else(|| format!("JWKS {url} is not available"));
    }
    let mut delay = Duration::from_millis(100);
    let mut last = String::new();
    for attempt in 0..=retries {
        if attempt > 0 {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        match source.fetcher.get(url).await.map_err(|e| e.to_string()).and_then(|body| parse_jwks(&body, false)) {
            Ok(keys) => {
                let keys = Arc::new(keys);
                if let Ok(mut k) = entry.keys.write() {
                    *k = Some(keys.clone());
                }
                if let Ok(mut f) = entry.fetched.lock() {
                    *f = Some(Instant::now());
                }
                tracing::info!(url, keys = keys.len(), "JWKS fetched");
                return Ok(keys);
            }
            Err(e) => last = e,
        }
    }
    tracing::warn!(url, error = %last, "JWKS fetch failed; the keys in hand stay in use");
    current.ok_or_else(|| format!("JWKS {url} is not available: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn hmac_check() -> JwtCheck {
        let rules = pb::JwtAuth {
            app_id_claim: "azp".into(),
            keys: Some(pb::jwt_auth::Keys::HmacSecret(b"s3cret-s3cret-s3cret-s3cret-s3cret".to_vec())),
            ..Default::default()
        };
        JwtCheck::new("ns/api", &rules)
    }

    fn sign(alg: Algorithm, claims: Value, secret: &[u8]) -> String {
        encode(&Header::new(alg), &claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    #[tokio::test]
    async fn good_expired_early_and_forged_tokens() {
        let c = hmac_check();
        let cache = JwksCache::default();
        let key = b"s3cret-s3cret-s3cret-s3cret-s3cret";
        let good = sign(Algorithm::HS256, serde_json::json!({"azp": "app-a", "exp": now() + 60}), key);
        assert_eq!(c.verify(&good, &cache).await.unwrap()["azp"], "app-a");
        let expired = sign(Algorithm::HS256, serde_json::json!({"azp": "app-a", "exp": now() - 60}), key);
        assert_eq!(c.verify(&expired, &cache).await.unwrap_err(), "the token has expired");
        let early =
            sign(Algorithm::HS384, serde_json::json!({"azp": "a", "nbf": now() + 600, "exp": now() + 900}), key);
        assert!(c.verify(&early, &cache).await.unwrap_err().contains("not valid yet"));
        let forged = sign(Algorithm::HS256, serde_json::json!({"azp": "app-a", "exp": now() + 60}), b"another-secret");
        assert_eq!(c.verify(&forged, &cache).await.unwrap_err(), "invalid signature");
        // exp of the wrong type is refused, not skipped.
        let typed = sign(Algorithm::HS256, serde_json::json!({"azp": "a", "exp": "never"}), key);
        assert!(c.verify(&typed, &cache).await.is_err());
        // A token without exp never expires: refused.
        let forever = sign(Algorithm::HS256, serde_json::json!({"azp": "app-a"}), key);
        assert!(c.verify(&forever, &cache).await.unwrap_err().contains("exp"));
    }

    #[tokio::test]
    async fn alg_none_and_algorithm_confusion_are_refused() {
        use base64::Engine;
        let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let c = hmac_check();
        let cache = JwksCache::default();
        let none = format!("{}.{}.", b64(&serde_json::json!({"alg": "none"})), b64(&serde_json::json!({"azp": "a"})));
        assert!(c.verify(&none, &cache).await.unwrap_err().starts_with("malformed token"));

        // An EC public key: a token "signed" with HS256 using the key's PEM as the secret
        // finds no key for HS256.
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pem = pair.public_key_pem();
        let ec = JwtCheck::new(
            "ns/api",
            &pb::JwtAuth {
                app_id_claim: "azp".into(),
                keys: Some(pb::jwt_auth::Keys::PublicKeyPem(pem.clone())),
                ..Default::default()
            },
        );
        let confused = sign(Algorithm::HS256, serde_json::json!({"azp": "a", "exp": now() + 60}), pem.as_bytes());
        assert!(ec.verify(&confused, &cache).await.unwrap_err().contains("no key for algorithm HS256"));
        let signed = encode(
            &Header::new(Algorithm::ES256),
            &serde_json::json!({"azp": "a", "exp": now() + 60}),
            &EncodingKey::from_ec_der(pair.serialized_der()),
        )
        .unwrap();
        assert_eq!(ec.verify(&signed, &cache).await.unwrap()["azp"], "a");
    }

    #[test]
    fn broken_keys_refuse_everything() {
        let c = JwtCheck::new(
            "ns/api",
            &pb::JwtAuth {
                app_id_claim: "azp".into(),
                keys: Some(pb::jwt_auth::Keys::PublicKeyPem(
                    "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----".into(),
                )),
                ..Default::default()
            },
        );
        assert!(matches!(c.keys, Keys::Broken(_)));
        assert!(parse_jwks(b"{\"keys\": [{\"kty\": \"RSA\", \"n\": \"!!\"}]}", false).unwrap().is_empty());
        assert!(parse_jwks(b"[]", false).is_err());
        // A symmetric secret in a fetched JWKS would let anyone who reads it sign tokens.
        let oct = b"{\"keys\": [{\"kty\": \"oct\", \"k\": \"c2VjcmV0\", \"kid\": \"h\"}]}";
        assert!(parse_jwks(oct, false).unwrap().is_empty());
        assert_eq!(parse_jwks(oct, true).unwrap().len(), 1, "a local jwksFile may hold one");
        // A key for encryption algorithms never verifies.
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let ec = |alg: &str| {
            serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65]), "alg": alg}]})
                .to_string()
        };
        assert_eq!(parse_jwks(ec("ES256").as_bytes(), false).unwrap().len(), 1);
        assert!(parse_jwks(ec("ECDH-ES").as_bytes(), false).unwrap().is_empty());
    }
}
