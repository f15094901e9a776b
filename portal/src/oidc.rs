//! Sign-in through OpenID Connect (an APIPortalAuth's `oidc`): the authorization code flow
//! with PKCE, a `state` bound to the browser by a `__Host-` cookie and kept server-side
//! (once, 10 minutes), and a `nonce` the ID token must carry. The ID token's signature,
//! issuer, audience and expiry are checked by `openidconnect`; its groups claim decides
//! what the user sees. Talking to the provider is bounded in time and size.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use atrium_data_plane::fetch::{FetchError, Fetcher};
use atrium_proto::v1 as pb;
use base64::Engine;
use bytes::Bytes;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, Scope, TokenResponse,
};

use crate::store::{PendingLogin, User};
use crate::web::Fail;

/// The cookie that ties a sign-in's `state` to the browser that started it.
pub(crate) const STATE_COOKIE: &str = "__Host-atrium-oidc";
/// The path the provider sends the browser back to.
pub(crate) const CALLBACK: &str = "/login/oidc/callback";
/// Sign-ins on their way at most (each start stores one for 10 minutes).
pub(crate) const MAX_PENDING: i64 = 10_000;
/// How long a provider's metadata (and keys) are kept.
const METADATA_TTL: Duration = Duration::from_secs(300);

/// Providers' metadata, by issuer.
#[derive(Default)]
pub struct Providers {
    cache: Mutex<HashMap<String, (Instant, CoreProviderMetadata)>>,
}

fn fetcher(o: &pb::PortalOidc) -> Result<Fetcher, Fail> {
    let timeout = Duration::from_secs(u64::from(o.timeout_seconds.max(1)));
    Fetcher::new(&o.ca_pem, timeout, 1 << 20)
        .map_err(|e| Fail::Internal(format!("OIDC client for {}: {e}", o.issuer_url)))
}

/// A provider's metadata is cached per issuer and CA (two APIPortalAuths may pin
/// different CAs for one issuer).
fn cache_key(o: &pb::PortalOidc) -> String {
    format!("{}\n{}", o.issuer_url, o.ca_pem)
}

/// Sends an OAuth request with `f`.
async fn send(f: Fetcher, req: openidconnect::HttpRequest) -> Result<openidconnect::HttpResponse, FetchError> {
    let (parts, body) = req.into_parts();
    let resp = f.send(http::Request::from_parts(parts, Bytes::from(body))).await?;
    let (parts, body) = resp.into_parts();
    Ok(http::Response::from_parts(parts, body.to_vec()))
}

/// Why the provider could not be used, as the login page shows it (details in the log).
fn provider_failed(o: &pb::PortalOidc, what: &str, e: impl std::fmt::Display) -> Fail {
    tracing::warn!(issuer = %o.issuer_url, error = %e, "OIDC {what} failed");
    Fail::Unavailable(format!("the sign-in provider {} could not be reached ({what}); try again later", o.issuer_url))
}

impl Providers {
    async fn metadata(&self, o: &pb::PortalOidc, f: &Fetcher) -> Result<CoreProviderMetadata, Fail> {
        if let Ok(c) = self.cache.lock() {
            if let Some((at, m)) = c.get(&cache_key(o)) {
                if at.elapsed() < METADATA_TTL {
                    return Ok(m.clone());
                }
            }
        }
        let issuer = IssuerUrl::new(o.issuer_url.clone()).map_err(|e| provider_failed(o, "issuer URL", e))?;
        let http = |req| send(f.clone(), req);
        let m = CoreProviderMetadata::discover_async(issuer, &http)
            .await
            .map_err(|e| provider_failed(o, "discovery", e))?;
        if let Ok(mut c) = self.cache.lock() {
            c.insert(cache_key(o), (Instant::now(), m.clone()));
        }
        Ok(m)
    }

    fn client(
        o: &pb::PortalOidc,
        m: CoreProviderMetadata,
        redirect_uri: &str,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        Fail,
    > {
        let redirect =
            RedirectUrl::new(redirect_uri.to_string()).map_err(|e| Fail::Invalid(format!("redirect URI: {e}")))?;
        Ok(CoreClient::from_provider_metadata(
            m,
            ClientId::new(o.client_id.clone()),
            Some(ClientSecret::new(o.client_secret.clone())),
        )
        .set_redirect_uri(redirect))
    }

    /// Starts a sign-in at `portal` for a browser at `origin`: the provider's URL to send it
    /// to, and the `state` to set in [`STATE_COOKIE`]. The pending sign-in is stored.
    pub(crate) async fn start(
        &self,
        store: &crate::store::Store,
        site: &pb::PortalSite,
        o: &pb::PortalOidc,
        origin: &str,
    ) -> Result<(String, String), Fail> {
        let f = fetcher(o)?;
        let m = self.metadata(o, &f).await?;
        let redirect_uri = redirect_uri(site, origin)?;
        let client = Self::client(o, m, &redirect_uri)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req =
            client.authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random);
        let mut scopes = vec!["email".to_string(), "profile".to_string()];
        scopes.extend(o.scopes.iter().cloned());
        scopes.dedup();
        for s in scopes {
            req = req.add_scope(Scope::new(s));
        }
        let (url, state, nonce) = req.set_pkce_challenge(challenge).url();
        let pending = PendingLogin {
            portal: site.id.clone(),
            verifier: verifier.secret().clone(),
            nonce: nonce.secret().clone(),
            redirect_uri,
            created: crate::store::now(),
        };
        let st = state.secret().clone();
        store.run(move |s| s.add_pending_login(&st, &pending)).await?;
        Ok((url.to_string(), state.secret().clone()))
    }

    /// Finishes the sign-in `state` with `code` at `site`: the user, provisioned with the
    /// groups of the ID token. `browser_state` is the browser's [`STATE_COOKIE`].
    pub(crate) async fn finish(
        &self,
        store: &crate::store::Store,
        site: &pb::PortalSite,
        o: &pb::PortalOidc,
        code: &str,
        state: &str,
        browser_state: Option<&str>,
    ) -> Result<User, Fail> {
        if !browser_state.is_some_and(|b| crate::auth::same(b, state)) {
            return Err(Fail::Forbidden("this sign-in was not started in this browser: start again".into()));
        }
        let st = state.to_string();
        let pending = store.run(move |s| s.take_pending_login(&st)).await?;
        let Some(pending) = pending.filter(|p| p.portal == site.id) else {
            return Err(Fail::Forbidden("this sign-in expired or was used already: start again".into()));
        };
        let f = fetcher(o)?;
        let m = self.metadata(o, &f).await?;
        let client = Self::client(o, m, &pending.redirect_uri)?;
        let http = |req| send(f.clone(), req);
        let token = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| provider_failed(o, "token endpoint", e))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier.clone()))
            .request_async(&http)
            .await
            .map_err(|e| {
                tracing::warn!(issuer = %o.issuer_url, error = %e, "OIDC code exchange refused");
                Fail::Forbidden("the sign-in provider refused the sign-in: start again".into())
            })?;
        let id_token = token.id_token().ok_or_else(|| Fail::Forbidden("the provider sent no ID token".into()))?;
        let claims = id_token.claims(&client.id_token_verifier(), &Nonce::new(pending.nonce.clone())).map_err(|e| {
            tracing::warn!(issuer = %o.issuer_url, error = %e, "OIDC ID token refused");
            Fail::Forbidden("the ID token could not be verified".into())
        })?;
        // The token is verified: its payload can be read for the configured claims.
        let payload = id_token.to_string();
        let raw: serde_json::Value = payload
            .split('.')
            .nth(1)
            .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        // The account is the provider's subject (the configured user-id claim, `sub` by
        // default), never the email; an email the provider says is not verified is not used.
        let subject = raw
            .get(&o.user_id_claim)
            .and_then(|v| v.as_str().map(str::to_string).or_else(|| v.as_i64().map(|i| i.to_string())))
            .unwrap_or_else(|| claims.subject().as_str().to_string());
        let verified = raw.get("email_verified").and_then(|v| v.as_bool()) != Some(false);
        let email = raw
            .get(&o.email_claim)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .or_else(|| claims.email().map(|e| e.to_string()))
            .filter(|_| verified)
            .unwrap_or_else(|| {
                let host = http::Uri::try_from(o.issuer_url.as_str())
                    .ok()
                    .and_then(|u| u.host().map(str::to_string))
                    .unwrap_or_default();
                let local: String = subject
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                    .take(64)
                    .collect();
                format!("{local}@{host}")
            });
        let groups = groups_of(raw.get(&o.groups_claim));
        let issuer = o.issuer_url.clone();
        let user = store.run(move |s| s.upsert_oidc_user(&issuer, &subject, &email, &groups)).await?;
        let actor = user.email.clone();
        store.run(move |s| s.audit(&actor, "login", "oidc")).await?;
        Ok(user)
    }
}

/// Groups from a claim: a list of strings, or one comma- or space-separated string.
pub(crate) fn groups_of(v: Option<&serde_json::Value>) -> Vec<String> {
    match v {
        Some(serde_json::Value::Array(a)) => {
            a.iter().filter_map(|g| g.as_str().map(str::to_string)).take(200).collect()
        }
        Some(serde_json::Value::String(s)) => {
            s.split([',', ' ']).map(str::trim).filter(|g| !g.is_empty()).map(str::to_string).take(200).collect()
        }
        _ => Vec::new(),
    }
}

/// Where the provider sends the browser back: the portal at the origin the browser used
/// when that origin is one of the APIPortal's `trustedUrls`, else at the first of them.
pub(crate) fn redirect_uri(site: &pb::PortalSite, origin: &str) -> Result<String, Fail> {
    let trusted = |u: &String| u.trim_end_matches('/').eq_ignore_ascii_case(origin);
    let base = if site.trusted_urls.iter().any(trusted) {
        origin.to_string()
    } else {
        site.trusted_urls
            .first()
            .map(|u| u.trim_end_matches('/').to_string())
            .ok_or_else(|| Fail::Invalid("the APIPortal lists no trustedUrls to come back to".into()))?
    };
    Ok(format!("{base}{CALLBACK}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_read_from_lists_and_strings() {
        assert_eq!(groups_of(Some(&serde_json::json!(["a", "b", 3]))), ["a", "b"]);
        assert_eq!(groups_of(Some(&serde_json::json!("a, b c"))), ["a", "b", "c"]);
        assert!(groups_of(None).is_empty());
    }

    #[test]
    fn the_callback_is_at_a_trusted_origin() {
        let site = pb::PortalSite {
            trusted_urls: vec!["https://portal.example.com/".into(), "http://portal.test".into()],
            ..Default::default()
        };
        assert_eq!(redirect_uri(&site, "http://portal.test").unwrap(), "http://portal.test/login/oidc/callback");
        assert_eq!(
            redirect_uri(&site, "https://evil.example").unwrap(),
            "https://portal.example.com/login/oidc/callback"
        );
        assert!(redirect_uri(&pb::PortalSite::default(), "https://x").is_err());
    }
}
