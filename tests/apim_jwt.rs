//! JWT authentication of an API end to end: tokens verified with keys fetched from a
//! trusted issuer's JWKS (HTTPS with its own CA, on loopback), the application named by a
//! claim, claims forwarded in headers that a client cannot forge, the token kept from the
//! backend; expired, foreign, unsigned and unknown-key tokens refused; a rotated key found
//! by refetching the JWKS once, not once per token.

mod common;

use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use common::backend;
use common::client::Resp;
use common::gateway::GatewayProc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const ISSUER: &str = "https://idp.example";

/// A JWKS server over HTTPS: what it serves can change; it counts the fetches.
struct Jwks {
    doc: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    url: String,
    ca_pem: String,
}

async fn jwks_server() -> Jwks {
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&leaf_key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let doc = Arc::new(Mutex::new(String::new()));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (d, f) = (doc.clone(), fetches.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, d, f) = (acceptor.clone(), d.clone(), f.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |_req| {
                    f.fetch_add(1, Ordering::SeqCst);
                    let body = d.lock().unwrap().clone();
                    async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(common::client::body(body))) }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    Jwks { doc, fetches, url: format!("https://127.0.0.1:{}/jwks", addr.port()), ca_pem: ca.pem() }
}

/// An ES256 signing key with its JWK.
struct SigningKey {
    kid: String,
    pair: rcgen::KeyPair,
}

impl SigningKey {
    fn new(kid: &str) -> SigningKey {
        SigningKey { kid: kid.into(), pair: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap() }
    }

    fn jwk(&self) -> serde_json::Value {
        let raw = self.pair.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
            "kid": self.kid, "alg": "ES256", "use": "sig"})
    }

    fn sign(&self, claims: serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ec_der(self.pair.serialized_der())).unwrap()
    }
}

fn jwks_doc(keys: &[&SigningKey]) -> String {
    serde_json::json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

fn manifests(jwks: &Jwks) -> String {
    let ca = jwks.ca_pem.lines().map(|l| format!("          {l}")).collect::<Vec<_>>().join("\n");
    format!(
        "apiVersion: hub.traefik.io/v1alpha1
kind: APIAuth
metadata: {{name: idp, namespace: ns}}
spec:
  isDefault: true
  jwt:
    appIdClaim: azp
    trustedIssuers: [{{issuer: \"{ISSUER}\", jwksUrl: \"{url}\"}}]
    forwardHeaders: {{X-Test: sub}}
    stripAuthorizationHeader: true
    tokenQueryKey: token
    clientConfig:
      timeoutSeconds: 2
      tls:
        ca: |
{ca}
---
apiVersion: hub.traefik.io/v1alpha1
kind: API
metadata: {{name: crm-api, namespace: ns}}
spec: {{}}
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata:
  name: crm
  namespace: ns
  annotations: {{hub.traefik.io/api: crm-api}}
spec:
  entryPoints: [web]
  routes:
    - match: PathPrefix(`/crm`)
      services: [{{name: svc, port: 80}}]
---
apiVersion: hub.traefik.io/v1alpha1
kind: APIPlan
metadata: {{name: std, namespace: ns}}
spec: {{title: Standard, rateLimit: {{limit: 100, period: 1m}}}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: ManagedApplication
metadata: {{name: app-a, namespace: ns}}
spec: {{appId: app-a, owner: tests}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: ManagedApplication
metadata: {{name: app-b, namespace: ns}}
spec: {{appId: app-b, owner: tests}}
---
apiVersion: hub.traefik.io/v1alpha1
kind: ManagedSubscription
metadata: {{name: a-std, namespace: ns}}
spec: {{apiPlan: {{name: std}}, managedApplications: [{{name: app-a}}], apis: [{{name: crm-api}}]}}
",
        url = jwks.url
    )
}

async fn call(gw: &GatewayProc, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Resp {
    let mut req = hyper::Request::get(gw.web(path));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    common::client::send(&common::client::http1(), req.body(common::client::body("")).unwrap()).await
}

fn problem(r: &Resp) -> (u16, String) {
    let doc: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    (r.status, doc["type"].as_str().unwrap_or("").rsplit('/').next().unwrap().to_string())
}

fn claims(azp: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut c = serde_json::json!({"iss": ISSUER, "azp": azp, "sub": "user-7",
        "exp": jsonwebtoken::get_current_timestamp() + 300});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_a_trusted_issuer_reach_the_api_and_every_bad_token_is_refused() {
    let jwks = jwks_server().await;
    let k1 = SigningKey::new("k1");
    *jwks.doc.lock().unwrap() = jwks_doc(&[&k1]);
    let be = backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("m.yaml"), manifests(&jwks) + &common::service_manifests("ns", "svc", &[be.addr]))
        .unwrap();
    let gw = GatewayProc::start(None, tmp.path(), &["--workers", "1"]);

    // A good token: through, the application's plan applies, the claim is forwarded in
    // place of the client's own header, and the token does not reach the backend.
    let good = k1.sign(claims("app-a", serde_json::json!({})));
    let r = call(&gw, "/crm/x", Some(&good), &[("x-test", "forged-by-client")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-seen-x-test"), Some("user-7"));
    assert_eq!(r.header("x-seen-authorization"), None);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("99"));
    let r = call(&gw, &format!("/crm/q?a=1&token={good}"), None, &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(be.seen.lock().unwrap().last().map(String::as_str), Some("GET /crm/q?a=1"));
    // A token in the header and something in the token parameter: the parameter never
    // goes upstream either.
    let r = call(&gw, "/crm/q?token=junk&b=2", Some(&good), &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(be.seen.lock().unwrap().last().map(String::as_str), Some("GET /crm/q?b=2"));

    // Refusals, none reaching the backend.
    let seen = be.seen.lock().unwrap().len();
    let r = call(&gw, "/crm/x", None, &[]).await;
    assert_eq!(problem(&r), (401, "missing-credentials".into()));
    let expired = k1.sign(claims("app-a", serde_json::json!({"exp": jsonwebtoken::get_current_timestamp() - 600})));
    let r = call(&gw, "/crm/x", Some(&expired), &[]).await;
    assert_eq!(problem(&r), (401, "invalid-credentials".into()));
    assert!(r.body.contains("expired"), "{r:?}");
    let foreign = k1.sign(claims("app-a", serde_json::json!({"iss": "https://evil.example"})));
    let r = call(&gw, "/crm/x", Some(&foreign), &[]).await;
    assert_eq!(problem(&r), (401, "invalid-credentials".into()));
    assert!(r.body.contains("issuer is not trusted"), "{r:?}");
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!(
        "{}.{}.",
        b64(serde_json::json!({"alg": "none", "kid": "k1"})),
        b64(claims("app-a", serde_json::json!({})))
    );
    assert_eq!(problem(&call(&gw, "/crm/x", Some(&unsigned), &[]).await), (401, "invalid-credentials".into()));
    let mut tampered = good.clone();
    tampered.insert_str(good.find('.').unwrap() + 1, "eyJhenAiOiJhcHAtYiJ9");
    assert_eq!(problem(&call(&gw, "/crm/x", Some(&tampered), &[]).await).0, 401);
    let r = call(&gw, "/crm/x", Some(&k1.sign(claims("app-b", serde_json::json!({})))), &[]).await;
    assert_eq!(problem(&r), (403, "not-subscribed".into()));
    let r = call(&gw, "/crm/x", Some(&k1.sign(claims("app-z", serde_json::json!({})))), &[]).await;
    assert_eq!(problem(&r), (403, "unknown-application".into()));
    let no_app = k1.sign(serde_json::json!({"iss": ISSUER, "exp": jsonwebtoken::get_current_timestamp() + 60}));
    assert_eq!(problem(&call(&gw, "/crm/x", Some(&no_app), &[]).await), (401, "invalid-credentials".into()));
    assert_eq!(be.seen.lock().unwrap().len(), seen, "no refused request reached the backend");

    // The issuer rotates to a new key: the first token with the new kid refetches the JWKS
    // once; unknown kids after that do not make the gateway fetch again and again.
    let fetched = jwks.fetches.load(Ordering::SeqCst);
    assert!(fetched >= 1);
    let k2 = SigningKey::new("k2");
    *jwks.doc.lock().unwrap() = jwks_doc(&[&k1, &k2]);
    let r = call(&gw, "/crm/x", Some(&k2.sign(claims("app-a", serde_json::json!({})))), &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), fetched + 1);
    let stranger = SigningKey::new("k9");
    for _ in 0..5 {
        let r = call(&gw, "/crm/x", Some(&stranger.sign(claims("app-a", serde_json::json!({})))), &[]).await;
        assert_eq!(problem(&r), (401, "invalid-credentials".into()));
    }
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), fetched + 1, "one refetch per ten seconds at most");
}
