//! Passwords (argon2id), random tokens (API keys, sessions, CSRF, one-time passwords) and
//! the login rate limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;

/// `bytes` random bytes from the operating system, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The OS generator does not fail on the platforms atrium runs on; if it ever did, a
    // token must not be predictable, so refuse to go on.
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf).expect("the OS random generator failed");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// A new API key: `atr_` and 256 random bits. Shown once; only its SHA-256 is kept.
pub fn new_api_key() -> String {
    format!("atr_{}", random_token(32))
}

/// A one-time password (to be changed at the first login).
pub fn one_time_password() -> String {
    random_token(12)
}

/// The argon2id hash of `password` (a PHC string with its own salt).
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .expect("the OS random generator failed");
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt");
    argon2::Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).unwrap_or_default()
}

/// Whether `password` matches `hash` (constant time in the password).
pub fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(h) => argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// A hash to verify against when the user does not exist, so that a login for an unknown
/// email takes as long as one with a wrong password.
pub fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| hash_password("atrium-dummy-password"))
}

/// Why a new password is refused.
pub fn password_problem(p: &str) -> Option<&'static str> {
    if p.chars().count() < 10 {
        Some("a password has at least 10 characters")
    } else if p.len() > 1024 {
        Some("a password has at most 1024 bytes")
    } else {
        None
    }
}

/// Failed logins per key (an email, a client address) in a sliding window: past `max`
/// failures within `window`, further attempts are refused until the window moves on.
#[derive(Debug)]
pub struct LoginLimiter {
    max: usize,
    window: Duration,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl LoginLimiter {
    /// At most `max` failures per key within `window`.
    pub fn new(max: usize, window: Duration) -> LoginLimiter {
        LoginLimiter { max, window, failures: Mutex::default() }
    }

    /// How long `key` must wait before trying again (none: it may try now).
    pub fn blocked(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let list = f.get_mut(key)?;
        list.retain(|t| now.duration_since(*t) < self.window);
        if list.len() < self.max {
            return None;
        }
        list.first().map(|t| self.window.saturating_sub(now.duration_since(*t)))
    }

    /// Records a failed attempt of `key`.
    pub fn failed(&self, key: &str) {
        let now = Instant::now();
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() > 100_000 {
            // Bounded memory under a spray of distinct keys: forget windows that are over.
            let window = self.window;
            f.retain(|_, l| l.last().is_some_and(|t| now.duration_since(*t) < window));
        }
        f.entry(key.to_string()).or_default().push(now);
    }

    /// Forgets the failures of `key` (after a successful login).
    pub fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// Compares two strings in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_themselves() {
        let h = hash_password("correct horse battery");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterY", &h));
        assert!(!verify_password("x", "not a hash"));
        assert_ne!(hash_password("same"), hash_password("same"), "salted");
    }

    #[test]
    fn keys_and_tokens_are_long_and_distinct() {
        let (a, b) = (new_api_key(), new_api_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 43, "256 bits in base64url: {a}");
        assert!(a.starts_with("atr_"));
    }

    #[test]
    fn the_limiter_blocks_after_max_failures_and_a_success_clears_it() {
        let l = LoginLimiter::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            assert!(l.blocked("ann").is_none());
            l.failed("ann");
        }
        let wait = l.blocked("ann").expect("blocked");
        assert!(wait <= Duration::from_secs(60) && wait > Duration::from_secs(50));
        assert!(l.blocked("bob").is_none());
        l.succeeded("ann");
        assert!(l.blocked("ann").is_none());
        let short = LoginLimiter::new(1, Duration::from_millis(1));
        short.failed("x");
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.blocked("x").is_none(), "the window moved on");
    }

    #[test]
    fn same_compares_whole_strings() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }
}
