//! The `basicAuth` middleware: users from a Secret, in htpasswd formats.
//!
//! The compiler reads the Secret named by `secret` and hands the data plane its users as
//! `user:hash` lines (`resolvedUsers`); plain passwords of a `kubernetes.io/basic-auth`
//! Secret travel as `{SHA256}` hashes, never in clear. Accepted hashes: bcrypt (`$2a$`,
//! `$2b$`, `$2y$`), Apache MD5 (`$apr1$`, htpasswd's default), `{SHA}` and `{SHA256}`.

use crate::middleware::MiddlewareError;
use std::collections::HashMap;

use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use md5::{Digest as _, Md5};

use super::config::BasicAuth;
use crate::Answer;

#[derive(Debug, Clone)]
enum Hash {
    Bcrypt(String),
    Apr1 { salt: String, full: String },
    Sha1(Vec<u8>),
    Sha256(Vec<u8>),
}

/// A compiled basicAuth middleware.
#[derive(Debug, Clone)]
pub struct BasicAuthCheck {
    users: HashMap<String, Hash>,
    realm: String,
    remove_header: bool,
    header_field: Option<HeaderName>,
}

fn parse_hash(h: &str) -> Result<Hash, MiddlewareError> {
    if h.starts_with("$2a$") || h.starts_with("$2b$") || h.starts_with("$2y$") {
        return Ok(Hash::Bcrypt(h.to_string()));
    }
    if let Some(rest) = h.strip_prefix("$apr1$") {
        let salt = rest.split('$').next().unwrap_or("").to_string();
        return Ok(Hash::Apr1 { salt, full: h.to_string() });
    }
    if let Some(b64) = h.strip_prefix("{SHA}") {
        return base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Hash::Sha1)
            .map_err(|e| MiddlewareError::from(format!("invalid {{SHA}} hash: {e}")));
    }
    if let Some(hex) = h.strip_prefix("{SHA256}") {
        let bytes: Result<Vec<u8>, _> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16)).collect();
        return bytes.map(Hash::Sha256).map_err(|_| "invalid {SHA256} hash".into());
    }
    Err("unsupported password hash (use bcrypt, $apr1$, {SHA} or {SHA256})".into())
}

/// Apache's MD5-crypt (`htpasswd -m`).
pub fn apr1(password: &[u8], salt: &[u8]) -> String {
    const ITOA64: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let magic = b"$apr1$";
    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(magic);
    ctx.update(salt);
    let mut alt = Md5::new();
    alt.update(password);
    alt.update(salt);
    alt.update(password);
    let alt = alt.finalize();
    let mut n = password.len();
    while n > 0 {
        ctx.update(&alt[..n.min(16)]);
        n = n.saturating_sub(16);
    }
    let mut i = password.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        i >>= 1;
    }
    let mut fin = ctx.finalize();
    for i in 0..1000 {
        let mut c = Md5::new();
        if i & 1 == 1 {
            c.update(password)
        } else {
            c.update(fin)
        }
        if i % 3 != 0 {
            c.update(salt);
        }
        if i % 7 != 0 {
            c.update(password);
        }
        if i & 1 == 1 {
            c.update(fin)
        } else {
            c.update(password)
        }
        fin = c.finalize();
    }
    let mut out = String::from("$apr1$");
    out.push_str(&String::from_utf8_lossy(salt));
    out.push('$');
    let mut to64 = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(ITOA64[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        to64((u32::from(fin[a]) << 16) | (u32::from(fin[b]) << 8) | u32::from(fin[c]), 4);
    }
    to64(u32::from(fin[11]), 2);
    out
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Hash {
    fn verify(&self, password: &str) -> bool {
        match self {
            Hash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            Hash::Apr1 { salt, full } => ct_eq(apr1(password.as_bytes(), salt.as_bytes()).as_bytes(), full.as_bytes()),
            Hash::Sha1(d) => ct_eq(&sha1::Sha1::digest(password.as_bytes()), d),
            Hash::Sha256(d) => ct_eq(&sha2::Sha256::digest(password.as_bytes()), d),
        }
    }
}

/// `{SHA256}` hash of a password, for Secrets that hold it in clear.
pub fn sha256_entry(user: &str, password: &str) -> String {
    let d = sha2::Sha256::digest(password.as_bytes());
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("{user}:{{SHA256}}{hex}")
}

impl BasicAuthCheck {
    /// Compiles the configuration (its users already resolved from the Secret).
    pub fn new(c: &BasicAuth) -> Result<Self, MiddlewareError> {
        let mut users = HashMap::new();
        for line in c
            .resolved_users
            .iter()
            .flat_map(|l| l.lines())
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (user, hash) = line.split_once(':').ok_or_else(|| {
                format!("basicAuth: user line without ':' ({:?}…)", line.chars().take(8).collect::<String>())
            })?;
            users.insert(
                user.to_string(),
                parse_hash(hash).map_err(|e| MiddlewareError::from(format!("basicAuth user {user:?}: {e}")))?,
            );
        }
        if users.is_empty() {
            return Err("basicAuth has no users (its Secret must hold `users` lines or a username and password)".into());
        }
        let header_field = c
            .header_field
            .as_deref()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| MiddlewareError::from(format!("basicAuth: invalid headerField {h:?}")))
            })
            .transpose()?;
        Ok(BasicAuthCheck {
            users,
            realm: c.realm.clone().unwrap_or_else(|| "traefik".into()),
            remove_header: c.remove_header == Some(true),
            header_field,
        })
    }

    /// Checks the request; `Some` is the 401 to send.
    pub fn check(&self, h: &mut HeaderMap) -> Option<Answer> {
        let creds = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
            .and_then(|d| String::from_utf8(d).ok());
        let user = creds
            .as_deref()
            .and_then(|c| c.split_once(':'))
            .and_then(|(u, p)| self.users.get(u).filter(|hash| hash.verify(p)).map(|_| u.to_string()));
        match user {
            Some(u) => {
                if self.remove_header {
                    h.remove(header::AUTHORIZATION);
                }
                if let (Some(f), Ok(v)) = (&self.header_field, HeaderValue::from_str(&u)) {
                    h.insert(f.clone(), v);
                }
                None
            }
            None => {
                let mut r = Answer::text(StatusCode::UNAUTHORIZED, "401 Unauthorized");
                if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{}\"", self.realm)) {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                Some(r)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apr1_matches_openssl() {
        // `openssl passwd -apr1 -salt abcdefgh password`
        assert_eq!(apr1(b"password", b"abcdefgh"), "$apr1$abcdefgh$FBwExRW4dCc8aL.OvjpIE1");
        assert_eq!(apr1(b"p@ss w0rd", b"12345678"), "$apr1$12345678$m6Db6MpaBl.d.GM.4RsO6/");
    }

    fn cfg(lines: &[&str]) -> BasicAuth {
        BasicAuth {
            secret: Some("s".into()),
            realm: None,
            remove_header: Some(true),
            header_field: Some("X-User".into()),
            resolved_users: lines.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn auth(user: &str, pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {v}")).unwrap());
        h
    }

    #[test]
    fn every_hash_format_verifies() {
        let bc = bcrypt::hash("secret", 4).unwrap();
        let rt = BasicAuthCheck::new(&cfg(&[
            "apr:$apr1$abcdefgh$FBwExRW4dCc8aL.OvjpIE1",
            "sha:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
            &format!("bc:{bc}"),
            &sha256_entry("plain", "hunter2"),
        ]))
        .unwrap();
        for (u, p) in [("apr", "password"), ("sha", "password"), ("bc", "secret"), ("plain", "hunter2")] {
            let mut h = auth(u, p);
            assert!(rt.check(&mut h).is_none(), "{u}");
            assert!(h.get(header::AUTHORIZATION).is_none(), "removeHeader");
            assert_eq!(h.get("x-user").unwrap(), u);
        }
        let r = rt.check(&mut auth("apr", "wrong")).unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers().get(header::WWW_AUTHENTICATE).unwrap(), "Basic realm=\"traefik\"");
        assert!(rt.check(&mut auth("nobody", "password")).is_some());
        assert!(rt.check(&mut HeaderMap::new()).is_some());
    }

    #[test]
    fn bad_configuration_is_refused() {
        assert!(BasicAuthCheck::new(&cfg(&[])).is_err());
        assert!(BasicAuthCheck::new(&cfg(&["nocolon"])).is_err());
        assert!(BasicAuthCheck::new(&cfg(&["u:$6$sha512crypt"])).is_err());
    }
}
