//! The portal's durable state: users, sessions, applications, API keys, subscriptions and
//! the audit log, in SQLite (WAL, `synchronous=FULL`: a write is on disk before it is
//! acknowledged, so nothing a user created is lost on `kill -9`).
//!
//! API keys are never stored: only the SHA-256 of the whole key. Passwords are argon2id
//! hashes. Session tokens are stored as their SHA-256 too, so a copy of the database does
//! not open sessions.
//!
//! Schema changes are numbered migrations, applied in order on open (`PRAGMA user_version`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use atrium_proto::v1 as pb;
use rusqlite::{Connection, OptionalExtension, params};

/// The migrations, in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE COLLATE NOCASE,
    groups TEXT NOT NULL,
    password TEXT NOT NULL,
    must_change INTEGER NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE sessions (
    token_sha256 BLOB PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL
);
CREATE TABLE applications (
    id INTEGER PRIMARY KEY,
    app_id TEXT NOT NULL UNIQUE,
    owner INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    portal TEXT NOT NULL,
    name TEXT NOT NULL,
    suspended INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL,
    UNIQUE (owner, portal, name)
);
CREATE TABLE keys (
    id INTEGER PRIMARY KEY,
    application INTEGER NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    sha256 BLOB NOT NULL UNIQUE,
    created INTEGER NOT NULL,
    expires INTEGER,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE subscriptions (
    id INTEGER PRIMARY KEY,
    application INTEGER NOT NULL REFERENCES applications(id) ON DELETE CASCADE,
    catalog_item TEXT NOT NULL,
    created INTEGER NOT NULL,
    UNIQUE (application, catalog_item)
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
",
    "
ALTER TABLE sessions ADD COLUMN portal TEXT NOT NULL DEFAULT '';
CREATE TABLE oidc_pending (
    state TEXT PRIMARY KEY,
    portal TEXT NOT NULL,
    verifier TEXT NOT NULL,
    nonce TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    created INTEGER NOT NULL
);
",
];

/// An OpenID Connect sign-in on its way: what the callback needs to finish it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLogin {
    /// The APIPortal it started at.
    pub portal: String,
    /// The PKCE verifier.
    pub verifier: String,
    /// The nonce the ID token must carry.
    pub nonce: String,
    /// The redirect URI it was started with.
    pub redirect_uri: String,
    /// Seconds since the Unix epoch.
    pub created: i64,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database.
    #[error("portal store {}: {source}", path.display())]
    Db {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// The object exists already (unique email, application name, subscription).
    #[error("{0}")]
    Conflict(String),
    /// No such object (or not the caller's).
    #[error("{0}")]
    NotFound(String),
    /// A value the store refuses.
    #[error("{0}")]
    Invalid(String),
}

/// A portal user.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct User {
    /// Row id.
    pub id: i64,
    /// Email, the login name (case-insensitive).
    pub email: String,
    /// Groups (catalog items show APIs to groups).
    pub groups: Vec<String>,
    /// The password is a one-time password that must be changed at the next login.
    pub must_change: bool,
    /// Seconds since the Unix epoch.
    pub created: i64,
}

/// A session: its user and its CSRF token.
#[derive(Debug, Clone)]
pub struct Session {
    /// The user.
    pub user: User,
    /// The token every form and REST write of the session must carry.
    pub csrf: String,
}

/// An application of a user in one portal.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Application {
    /// Row id.
    pub id: i64,
    /// The application id the gateway knows it by.
    pub app_id: String,
    /// The portal (`namespace/name`).
    pub portal: String,
    /// Its name, unique per user and portal.
    pub name: String,
    /// Suspended by an operator: its keys are refused.
    pub suspended: bool,
    /// Seconds since the Unix epoch.
    pub created: i64,
    /// Its keys (the hashes are not shown).
    pub keys: Vec<KeyInfo>,
    /// Its subscriptions.
    pub subscriptions: Vec<SubscriptionInfo>,
}

/// An API key, without the key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    /// Row id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Seconds since the Unix epoch.
    pub created: i64,
    /// When it stops working (seconds since the Unix epoch), if ever.
    pub expires: Option<i64>,
    /// Revoked.
    pub revoked: bool,
}

/// A subscription of an application to a catalog item (whose plan applies).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SubscriptionInfo {
    /// Row id.
    pub id: i64,
    /// The catalog item (`namespace/name`).
    pub catalog_item: String,
    /// Seconds since the Unix epoch.
    pub created: i64,
}

/// What the gateway needs from the store: every application with its live key hashes, and
/// every subscription, with what decides whether it still holds (the owner's groups and
/// the application's portal: an item no longer shown to the owner grants nothing).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grants {
    /// Applications, sorted by app id.
    pub applications: Vec<pb::Application>,
    /// Subscriptions, sorted by row id.
    pub subscriptions: Vec<SubscriptionGrant>,
}

/// A subscription as the gateway sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscriptionGrant {
    /// Row id.
    pub id: i64,
    /// The application's id.
    pub app_id: String,
    /// The catalog item (`namespace/name`).
    pub catalog_item: String,
    /// The application's portal (`namespace/name`).
    pub portal: String,
    /// The owner's groups now.
    pub groups: Vec<String>,
}

/// Applications a user may have in one portal.
pub const MAX_APPLICATIONS: i64 = 50;
/// Live (not revoked) keys an application may have.
pub const MAX_KEYS: i64 = 20;

/// The store. Cheap to clone; operations are short and synchronous (call them from a
/// blocking thread, see [`Store::run`]).
#[derive(Clone)]
pub struct Store {
    db: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl Store {
    /// Opens (creating when missing) the store at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db_err = |source| StoreError::Db { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut conn = Connection::open(path).map_err(db_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(db_err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(db_err)?;
        conn.pragma_update(None, "foreign_keys", true).map_err(db_err)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(db_err)?;
        let target = MIGRATIONS.len() as i64;
        if version > target {
            return Err(StoreError::Invalid(format!(
                "portal store {}: schema version {version} is newer than this atrium knows ({target}); \
                 upgrade atrium or restore a backup",
                path.display()
            )));
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction().map_err(db_err)?;
            tx.execute_batch(m).map_err(db_err)?;
            tx.pragma_update(None, "user_version", i as i64 + 1).map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            tracing::info!(store = %path.display(), version = i + 1, "portal store migrated");
        }
        Ok(Store { db: Arc::new(Mutex::new(conn)), path: path.to_path_buf() })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (every write is a
        // transaction), so a poisoned lock is still usable.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        if let rusqlite::Error::SqliteFailure(e, msg) = &source {
            if e.code == rusqlite::ErrorCode::ConstraintViolation {
                return StoreError::Conflict(msg.clone().unwrap_or_else(|| "already exists".into()));
            }
        }
        StoreError::Db { path: self.path.clone(), source }
    }

    /// Runs `f` on a blocking thread (SQLite waits for the disk).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let s = self.clone();
        tokio::task::spawn_blocking(move || f(&s))
            .await
            .unwrap_or_else(|e| Err(StoreError::Invalid(format!("store task failed: {e}"))))
    }

    /// Records an audit event.
    pub fn audit(&self, actor: &str, action: &str, detail: &str) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO audit (at, actor, action, detail) VALUES (?1, ?2, ?3, ?4)",
                params![now(), actor, action, detail],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The last `n` audit events, newest first: (at, actor, action, detail).
    pub fn audit_log(&self, n: i64) -> Result<Vec<(i64, String, String, String)>, StoreError> {
        let c = self.conn();
        let mut st = c
            .prepare("SELECT at, actor, action, detail FROM audit ORDER BY id DESC LIMIT ?1")
            .map_err(|e| self.err(e))?;
        let rows = st.query_map([n], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    // ---- users ----

    /// Adds a user with password hash `password` (argon2id PHC string); `must_change` forces
    /// a new password at the first login.
    pub fn add_user(
        &self,
        email: &str,
        groups: &[String],
        password: &str,
        must_change: bool,
    ) -> Result<User, StoreError> {
        let email = email.trim();
        if !valid_email(email) {
            return Err(StoreError::Invalid(format!("{email:?} is not an email address")));
        }
        if let Some(g) = groups.iter().find(|g| !valid_group(g)) {
            return Err(StoreError::Invalid(format!("group {g:?}: use letters, digits, '-', '_' and '.'")));
        }
        let created = now();
        let groups_json = serde_json::to_string(groups).unwrap_or_else(|_| "[]".into());
        self.conn()
            .execute(
                "INSERT INTO users (email, groups, password, must_change, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![email, groups_json, password, must_change, created],
            )
            .map_err(|e| match self.err(e) {
                StoreError::Conflict(_) => StoreError::Conflict(format!("a user {email} exists already")),
                other => other,
            })?;
        self.audit("operator", "user.add", email)?;
        self.user_by_email(email)?.map(|(u, _)| u).ok_or_else(|| StoreError::NotFound(email.to_string()))
    }

    /// Signs in a user whom an OpenID Connect provider vouched for: created on the first
    /// sign-in (without a password: it cannot sign in locally), its groups those of the
    /// ID token at every sign-in. An email that a local account (with a password) uses is
    /// refused: a provider cannot take over a local account.
    pub fn upsert_oidc_user(&self, email: &str, groups: &[String], issuer: &str) -> Result<User, StoreError> {
        let email = email.trim();
        if !valid_email(email) {
            return Err(StoreError::Invalid(format!("the provider's email {email:?} is not an email address")));
        }
        let groups: Vec<String> = groups.iter().filter(|g| valid_group(g)).cloned().collect();
        let groups_json = serde_json::to_string(&groups).unwrap_or_else(|_| "[]".into());
        match self.user_by_email(email)? {
            Some((_, hash)) if !hash.is_empty() => {
                return Err(StoreError::Conflict(format!(
                    "a local account uses {email}: it cannot sign in through {issuer}"
                )));
            }
            Some((u, _)) => {
                self.conn()
                    .execute("UPDATE users SET groups = ?1 WHERE id = ?2", params![groups_json, u.id])
                    .map_err(|e| self.err(e))?;
            }
            None => {
                self.conn()
                    .execute(
                        "INSERT INTO users (email, groups, password, must_change, created) VALUES (?1, ?2, '', 0, ?3)",
                        params![email, groups_json, now()],
                    )
                    .map_err(|e| self.err(e))?;
                self.audit(issuer, "user.add", email)?;
            }
        }
        self.user_by_email(email)?.map(|(u, _)| u).ok_or_else(|| StoreError::NotFound(email.to_string()))
    }

    /// Records an OpenID Connect sign-in started with `state` (older ones, past 10 minutes,
    /// are dropped).
    pub fn add_pending_login(&self, state: &str, p: &PendingLogin) -> Result<(), StoreError> {
        let c = self.conn();
        c.execute("DELETE FROM oidc_pending WHERE created < ?1", [now() - 600]).map_err(|e| self.err(e))?;
        c.execute(
            "INSERT INTO oidc_pending (state, portal, verifier, nonce, redirect_uri, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![state, p.portal, p.verifier, p.nonce, p.redirect_uri, p.created],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Takes (and forgets) the sign-in started with `state`, if it is younger than 10
    /// minutes: each can finish once.
    pub fn take_pending_login(&self, state: &str) -> Result<Option<PendingLogin>, StoreError> {
        let c = self.conn();
        let found = c
            .query_row(
                "SELECT portal, verifier, nonce, redirect_uri, created FROM oidc_pending WHERE state = ?1",
                [state],
                |r| {
                    Ok(PendingLogin {
                        portal: r.get(0)?,
                        verifier: r.get(1)?,
                        nonce: r.get(2)?,
                        redirect_uri: r.get(3)?,
                        created: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))?;
        c.execute("DELETE FROM oidc_pending WHERE state = ?1", [state]).map_err(|e| self.err(e))?;
        Ok(found.filter(|p| p.created >= now() - 600))
    }

    /// The user `email` and its password hash.
    pub fn user_by_email(&self, email: &str) -> Result<Option<(User, String)>, StoreError> {
        let c = self.conn();
        c.query_row(
            "SELECT id, email, groups, must_change, created, password FROM users WHERE email = ?1",
            [email.trim()],
            |r| Ok((user_row(r)?, r.get::<_, String>(5)?)),
        )
        .optional()
        .map_err(|e| self.err(e))
    }

    /// Every user, by email.
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        let c = self.conn();
        let mut st = c
            .prepare("SELECT id, email, groups, must_change, created FROM users ORDER BY email")
            .map_err(|e| self.err(e))?;
        let rows = st.query_map([], user_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Removes user `email`, with its sessions, applications, keys and subscriptions.
    pub fn remove_user(&self, email: &str) -> Result<(), StoreError> {
        let n = self.conn().execute("DELETE FROM users WHERE email = ?1", [email.trim()]).map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no user {email}")));
        }
        self.audit("operator", "user.remove", email)
    }

    /// Sets a user's password hash; `must_change` forces another change at the next login
    /// (an operator's reset). Every session of the user ends, except `keep` (the session
    /// that made the change).
    pub fn set_password(
        &self,
        user_id: i64,
        password: &str,
        must_change: bool,
        keep: Option<&str>,
    ) -> Result<(), StoreError> {
        let c = self.conn();
        let n = c
            .execute(
                "UPDATE users SET password = ?1, must_change = ?2 WHERE id = ?3",
                params![password, must_change, user_id],
            )
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no user {user_id}")));
        }
        let keep = keep.map(sha256).unwrap_or_default();
        c.execute("DELETE FROM sessions WHERE user_id = ?1 AND token_sha256 != ?2", params![user_id, keep])
            .map_err(|e| self.err(e))?;
        drop(c);
        self.audit(&format!("user:{user_id}"), if must_change { "password.reset" } else { "password.change" }, "")
    }

    // ---- sessions ----

    /// A new session for `user_id` at `portal`, stored as the SHA-256 of `token`, valid
    /// `ttl_s`.
    pub fn create_session(
        &self,
        token: &str,
        user_id: i64,
        portal: &str,
        csrf: &str,
        ttl_s: i64,
    ) -> Result<(), StoreError> {
        let t = now();
        let c = self.conn();
        c.execute("DELETE FROM sessions WHERE expires < ?1", [t]).map_err(|e| self.err(e))?;
        c.execute(
            "INSERT INTO sessions (token_sha256, user_id, portal, csrf, created, expires) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![sha256(token), user_id, portal, csrf, t, t + ttl_s],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The live session of `token` at `portal` (a session opened at one portal is nothing
    /// at another).
    pub fn session(&self, token: &str, portal: &str) -> Result<Option<Session>, StoreError> {
        let c = self.conn();
        c.query_row(
            "SELECT u.id, u.email, u.groups, u.must_change, u.created, s.csrf FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.token_sha256 = ?1 AND s.expires >= ?2 AND s.portal = ?3",
            params![sha256(token), now(), portal],
            |r| Ok(Session { user: user_row(r)?, csrf: r.get(5)? }),
        )
        .optional()
        .map_err(|e| self.err(e))
    }

    /// Ends the session of `token`.
    pub fn end_session(&self, token: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM sessions WHERE token_sha256 = ?1", [sha256(token)])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    // ---- applications ----

    /// A new application of `owner` in `portal`.
    pub fn create_application(&self, owner: &User, portal: &str, name: &str) -> Result<Application, StoreError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
            return Err(StoreError::Invalid(
                "an application name has 1 to 100 characters, none of them control characters".into(),
            ));
        }
        let count: i64 = self
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM applications WHERE owner = ?1 AND portal = ?2",
                params![owner.id, portal],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        if count >= MAX_APPLICATIONS {
            return Err(StoreError::Conflict(format!(
                "you have {MAX_APPLICATIONS} applications already: delete one first"
            )));
        }
        let app_id = format!("portal-{}", crate::auth::random_token(9).to_lowercase().replace(['-', '_'], "x"));
        self.conn()
            .execute(
                "INSERT INTO applications (app_id, owner, portal, name, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![app_id, owner.id, portal, name, now()],
            )
            .map_err(|e| match self.err(e) {
                StoreError::Conflict(_) => {
                    StoreError::Conflict(format!("you have an application named {name:?} already"))
                }
                other => other,
            })?;
        self.audit(&owner.email, "application.create", &format!("{portal} {name} ({app_id})"))?;
        self.applications(owner.id, portal)?
            .into_iter()
            .find(|a| a.app_id == app_id)
            .ok_or_else(|| StoreError::NotFound(name.to_string()))
    }

    /// The applications of `owner` in `portal`, with their keys and subscriptions.
    pub fn applications(&self, owner: i64, portal: &str) -> Result<Vec<Application>, StoreError> {
        let c = self.conn();
        let mut st = c
            .prepare("SELECT id, app_id, portal, name, suspended, created FROM applications WHERE owner = ?1 AND portal = ?2 ORDER BY name")
            .map_err(|e| self.err(e))?;
        let apps: Vec<Application> = st
            .query_map(params![owner, portal], |r| {
                Ok(Application {
                    id: r.get(0)?,
                    app_id: r.get(1)?,
                    portal: r.get(2)?,
                    name: r.get(3)?,
                    suspended: r.get(4)?,
                    created: r.get(5)?,
                    keys: Vec::new(),
                    subscriptions: Vec::new(),
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        let mut keys = c
            .prepare("SELECT id, name, created, expires, revoked FROM keys WHERE application = ?1 ORDER BY id")
            .map_err(|e| self.err(e))?;
        let mut subs = c
            .prepare("SELECT id, catalog_item, created FROM subscriptions WHERE application = ?1 ORDER BY id")
            .map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(apps.len());
        for mut a in apps {
            a.keys = keys
                .query_map([a.id], |r| {
                    Ok(KeyInfo {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        created: r.get(2)?,
                        expires: r.get(3)?,
                        revoked: r.get(4)?,
                    })
                })
                .map_err(|e| self.err(e))?
                .collect::<Result<_, _>>()
                .map_err(|e| self.err(e))?;
            a.subscriptions = subs
                .query_map([a.id], |r| {
                    Ok(SubscriptionInfo { id: r.get(0)?, catalog_item: r.get(1)?, created: r.get(2)? })
                })
                .map_err(|e| self.err(e))?
                .collect::<Result<_, _>>()
                .map_err(|e| self.err(e))?;
            out.push(a);
        }
        Ok(out)
    }

    /// Application `id` when `owner` owns it in `portal`.
    pub fn application(&self, owner: i64, portal: &str, id: i64) -> Result<Application, StoreError> {
        self.applications(owner, portal)?
            .into_iter()
            .find(|a| a.id == id)
            .ok_or_else(|| StoreError::NotFound(format!("no application {id}")))
    }

    /// Deletes application `id` of `owner` (its keys stop working).
    pub fn delete_application(&self, owner: &User, portal: &str, id: i64) -> Result<(), StoreError> {
        let app = self.application(owner.id, portal, id)?;
        self.conn().execute("DELETE FROM applications WHERE id = ?1", [id]).map_err(|e| self.err(e))?;
        self.audit(&owner.email, "application.delete", &format!("{portal} {} ({})", app.name, app.app_id))
    }

    /// Suspends or resumes application `app_id` (an operator's action).
    pub fn suspend_application(&self, app_id: &str, suspended: bool) -> Result<(), StoreError> {
        let n = self
            .conn()
            .execute("UPDATE applications SET suspended = ?1 WHERE app_id = ?2", params![suspended, app_id])
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no application {app_id}")));
        }
        self.audit("operator", if suspended { "application.suspend" } else { "application.resume" }, app_id)
    }

    /// Adds a key (its SHA-256 `hash`) to application `app` of `owner`.
    pub fn add_key(
        &self,
        owner: &User,
        portal: &str,
        app: i64,
        name: &str,
        hash: &[u8; 32],
        expires: Option<i64>,
    ) -> Result<KeyInfo, StoreError> {
        let a = self.application(owner.id, portal, app)?;
        let name = name.trim();
        if name.len() > 100 || name.chars().any(char::is_control) {
            return Err(StoreError::Invalid(
                "a key name has at most 100 characters, none of them control characters".into(),
            ));
        }
        let created = now();
        let c = self.conn();
        let live: i64 = c
            .query_row("SELECT COUNT(*) FROM keys WHERE application = ?1 AND revoked = 0", [app], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if live >= MAX_KEYS {
            return Err(StoreError::Conflict(format!(
                "application {:?} has {MAX_KEYS} live keys already: revoke one first",
                a.name
            )));
        }
        c.execute(
            "INSERT INTO keys (application, name, sha256, created, expires) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![app, name, hash.as_slice(), created, expires],
        )
        .map_err(|e| self.err(e))?;
        let id = c.last_insert_rowid();
        drop(c);
        self.audit(&owner.email, "key.create", &format!("{} key {id} {name:?}", a.app_id))?;
        Ok(KeyInfo { id, name: name.to_string(), created, expires, revoked: false })
    }

    /// Revokes key `key`: of an application of `owner` when given, any key otherwise (an
    /// operator's action).
    pub fn revoke_key(&self, owner: Option<(&User, &str)>, key: i64) -> Result<(), StoreError> {
        let c = self.conn();
        let n = match owner {
            Some((u, portal)) => c.execute(
                "UPDATE keys SET revoked = 1 WHERE id = ?1 AND application IN (SELECT id FROM applications WHERE owner = ?2 AND portal = ?3)",
                params![key, u.id, portal],
            ),
            None => c.execute("UPDATE keys SET revoked = 1 WHERE id = ?1", [key]),
        }
        .map_err(|e| self.err(e))?;
        drop(c);
        if n == 0 {
            return Err(StoreError::NotFound(format!("no key {key}")));
        }
        self.audit(owner.map(|(u, _)| u.email.as_str()).unwrap_or("operator"), "key.revoke", &key.to_string())
    }

    /// Subscribes application `app` of `owner` to `catalog_item`; a second subscription of
    /// the same application to the same item is a conflict.
    pub fn subscribe(
        &self,
        owner: &User,
        portal: &str,
        app: i64,
        catalog_item: &str,
    ) -> Result<SubscriptionInfo, StoreError> {
        let a = self.application(owner.id, portal, app)?;
        let created = now();
        let c = self.conn();
        c.execute(
            "INSERT INTO subscriptions (application, catalog_item, created) VALUES (?1, ?2, ?3)",
            params![app, catalog_item, created],
        )
        .map_err(|e| match self.err(e) {
            StoreError::Conflict(_) => {
                StoreError::Conflict(format!("application {:?} is subscribed to {catalog_item} already", a.name))
            }
            other => other,
        })?;
        let id = c.last_insert_rowid();
        drop(c);
        self.audit(&owner.email, "subscription.create", &format!("{} → {catalog_item}", a.app_id))?;
        Ok(SubscriptionInfo { id, catalog_item: catalog_item.to_string(), created })
    }

    /// Ends subscription `id` of an application of `owner`.
    pub fn unsubscribe(&self, owner: &User, portal: &str, id: i64) -> Result<(), StoreError> {
        let n = self
            .conn()
            .execute(
                "DELETE FROM subscriptions WHERE id = ?1 AND application IN (SELECT id FROM applications WHERE owner = ?2 AND portal = ?3)",
                params![id, owner.id, portal],
            )
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no subscription {id}")));
        }
        self.audit(&owner.email, "subscription.delete", &id.to_string())
    }

    /// What the gateway needs: applications with their live keys (not revoked, not
    /// expired), and subscriptions.
    pub fn grants(&self) -> Result<Grants, StoreError> {
        let t = now();
        let c = self.conn();
        let mut apps: Vec<pb::Application> = c
            .prepare("SELECT id, app_id, suspended FROM applications ORDER BY app_id")
            .map_err(|e| self.err(e))?
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, bool>(2)?)))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?
            .into_iter()
            .map(|(id, app_id, suspended)| pb::Application {
                app_id,
                id: format!("portal/{id}"),
                suspended,
                keys: Vec::new(),
            })
            .collect();
        let mut keys = c
            .prepare(
                "SELECT a.app_id, k.sha256 FROM keys k JOIN applications a ON a.id = k.application
                 WHERE k.revoked = 0 AND (k.expires IS NULL OR k.expires > ?1) ORDER BY k.sha256",
            )
            .map_err(|e| self.err(e))?;
        let rows =
            keys.query_map([t], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))).map_err(|e| self.err(e))?;
        for row in rows {
            let (app_id, hash) = row.map_err(|e| self.err(e))?;
            if let Ok(i) = apps.binary_search_by(|a| a.app_id.as_str().cmp(&app_id)) {
                apps[i].keys.push(pb::ApiKey { sha256: hash, suspended: false });
            }
        }
        let subscriptions = c
            .prepare(
                "SELECT s.id, a.app_id, s.catalog_item, a.portal, u.groups FROM subscriptions s
                 JOIN applications a ON a.id = s.application JOIN users u ON u.id = a.owner ORDER BY s.id",
            )
            .map_err(|e| self.err(e))?
            .query_map([], |r| {
                Ok(SubscriptionGrant {
                    id: r.get(0)?,
                    app_id: r.get(1)?,
                    catalog_item: r.get(2)?,
                    portal: r.get(3)?,
                    groups: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        Ok(Grants { applications: apps, subscriptions })
    }

    /// The earliest expiry of a live key still to come (the gateway's view must change then).
    pub fn next_expiry(&self) -> Result<Option<i64>, StoreError> {
        self.conn()
            .query_row("SELECT MIN(expires) FROM keys WHERE revoked = 0 AND expires > ?1", [now()], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Copies the whole store to `to` (a consistent copy, while it is in use).
    pub fn backup(&self, to: &Path) -> Result<(), StoreError> {
        if to.exists() {
            return Err(StoreError::Conflict(format!("{} exists already", to.display())));
        }
        let dest = to.to_string_lossy().to_string();
        self.conn().execute("VACUUM INTO ?1", [dest]).map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// SHA-256 of `s`.
pub fn sha256(s: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).to_vec()
}

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    let groups: String = r.get(2)?;
    Ok(User {
        id: r.get(0)?,
        email: r.get(1)?,
        groups: serde_json::from_str(&groups).unwrap_or_default(),
        must_change: r.get(3)?,
        created: r.get(4)?,
    })
}

/// A plausible email address: one `@`, something on both sides, no spaces or controls.
fn valid_email(e: &str) -> bool {
    let Some((local, domain)) = e.split_once('@') else { return false };
    !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && e.len() <= 254
        && !e.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"'))
}

/// A group name as catalog items write them.
fn valid_group(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= 100
        && g.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("portal.db")).unwrap();
        (d, s)
    }

    #[test]
    fn users_are_unique_by_email_whatever_the_case() {
        let (_d, s) = store();
        s.add_user("Ann@example.com", &["developers".into()], "h", true).unwrap();
        let e = s.add_user("ann@EXAMPLE.com", &[], "h", true).unwrap_err();
        assert!(matches!(e, StoreError::Conflict(_)), "{e}");
        let (u, hash) = s.user_by_email("ANN@example.com").unwrap().unwrap();
        assert_eq!(
            (u.email.as_str(), u.groups.as_slice(), hash.as_str()),
            ("Ann@example.com", &["developers".to_string()][..], "h")
        );
        assert!(matches!(s.add_user("not-an-email", &[], "h", true), Err(StoreError::Invalid(_))));
        assert!(matches!(s.add_user("b@x", &["<script>".into()], "h", true), Err(StoreError::Invalid(_))));
    }

    #[test]
    fn a_second_subscription_to_the_same_item_conflicts_and_others_cannot_touch_it() {
        let (_d, s) = store();
        let ann = s.add_user("ann@x", &[], "h", false).unwrap();
        let bob = s.add_user("bob@x", &[], "h", false).unwrap();
        let app = s.create_application(&ann, "apps/p", "crm client").unwrap();
        s.subscribe(&ann, "apps/p", app.id, "apps/standard").unwrap();
        assert!(matches!(s.subscribe(&ann, "apps/p", app.id, "apps/standard"), Err(StoreError::Conflict(_))));
        // Bob cannot subscribe, add keys to or see Ann's application.
        assert!(matches!(s.subscribe(&bob, "apps/p", app.id, "apps/premium"), Err(StoreError::NotFound(_))));
        assert!(matches!(s.add_key(&bob, "apps/p", app.id, "k", &[1; 32], None), Err(StoreError::NotFound(_))));
        assert!(s.applications(bob.id, "apps/p").unwrap().is_empty());
        // Nor in another portal of Ann's.
        assert!(matches!(s.subscribe(&ann, "other/p", app.id, "apps/premium"), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn grants_carry_live_keys_only() {
        let (_d, s) = store();
        let ann = s.add_user("ann@x", &[], "h", false).unwrap();
        let app = s.create_application(&ann, "apps/p", "a").unwrap();
        let live = s.add_key(&ann, "apps/p", app.id, "live", &[1; 32], None).unwrap();
        let revoked = s.add_key(&ann, "apps/p", app.id, "revoked", &[2; 32], None).unwrap();
        s.add_key(&ann, "apps/p", app.id, "expired", &[3; 32], Some(now() - 1)).unwrap();
        s.revoke_key(Some((&ann, "apps/p")), revoked.id).unwrap();
        s.subscribe(&ann, "apps/p", app.id, "apps/item").unwrap();
        let g = s.grants().unwrap();
        assert_eq!(g.applications.len(), 1);
        assert_eq!(g.applications[0].keys, vec![pb::ApiKey { sha256: vec![1; 32], suspended: false }]);
        let sub = SubscriptionGrant {
            id: 1,
            app_id: app.app_id.clone(),
            catalog_item: "apps/item".into(),
            portal: "apps/p".into(),
            groups: vec![],
        };
        assert_eq!(g.subscriptions, vec![sub]);
        assert_eq!(live.id, 1);
        s.suspend_application(&app.app_id, true).unwrap();
        assert!(s.grants().unwrap().applications[0].suspended);
    }

    #[test]
    fn applications_and_live_keys_are_capped() {
        let (_d, s) = store();
        let ann = s.add_user("ann@x", &[], "h", false).unwrap();
        for i in 0..MAX_APPLICATIONS {
            s.create_application(&ann, "apps/p", &format!("a{i}")).unwrap();
        }
        assert!(matches!(s.create_application(&ann, "apps/p", "one more"), Err(StoreError::Conflict(_))));
        assert!(s.create_application(&ann, "other/p", "elsewhere").is_ok(), "per portal");
        let app = s.applications(ann.id, "apps/p").unwrap()[0].id;
        let mut last = 0;
        for i in 0..MAX_KEYS {
            last = s.add_key(&ann, "apps/p", app, "k", &[i as u8; 32], None).unwrap().id;
        }
        assert!(matches!(s.add_key(&ann, "apps/p", app, "k", &[99; 32], None), Err(StoreError::Conflict(_))));
        s.revoke_key(Some((&ann, "apps/p")), last).unwrap();
        assert!(s.add_key(&ann, "apps/p", app, "k", &[99; 32], None).is_ok(), "a revoked key frees a place");
    }

    #[test]
    fn oidc_users_are_provisioned_and_cannot_take_over_local_accounts() {
        let (_d, s) = store();
        s.add_user("local@x", &["admins".into()], "$argon2id$hash", false).unwrap();
        assert!(matches!(
            s.upsert_oidc_user("local@x", &["developers".into()], "https://idp"),
            Err(StoreError::Conflict(_))
        ));
        let u = s.upsert_oidc_user("sso@x", &["developers".into(), "<bad>".into()], "https://idp").unwrap();
        assert_eq!(u.groups, ["developers"]);
        let u = s.upsert_oidc_user("SSO@x", &["partners".into()], "https://idp").unwrap();
        assert_eq!(u.groups, ["partners"], "groups follow the ID token");
        assert_eq!(s.user_by_email("sso@x").unwrap().unwrap().1, "", "no local password");
        let p = PendingLogin {
            portal: "apps/p".into(),
            verifier: "v".into(),
            nonce: "n".into(),
            redirect_uri: "r".into(),
            created: now(),
        };
        s.add_pending_login("st", &p).unwrap();
        assert_eq!(s.take_pending_login("st").unwrap(), Some(p));
        assert_eq!(s.take_pending_login("st").unwrap(), None, "once");
        let old = PendingLogin {
            portal: "apps/p".into(),
            verifier: "v".into(),
            nonce: "n".into(),
            redirect_uri: "r".into(),
            created: now() - 601,
        };
        s.add_pending_login("old", &old).unwrap();
        assert_eq!(s.take_pending_login("old").unwrap(), None, "expired");
    }

    #[test]
    fn a_password_change_ends_the_other_sessions() {
        let (_d, s) = store();
        let ann = s.add_user("ann@x", &[], "h", false).unwrap();
        s.create_session("here", ann.id, "p", "c", 60).unwrap();
        s.create_session("stolen", ann.id, "p", "c", 60).unwrap();
        s.set_password(ann.id, "h2", false, Some("here")).unwrap();
        assert!(s.session("here", "p").unwrap().is_some());
        assert!(s.session("stolen", "p").unwrap().is_none());
        s.set_password(ann.id, "h3", true, None).unwrap();
        assert!(s.session("here", "p").unwrap().is_none(), "a reset ends every session");
    }

    #[test]
    fn sessions_are_stored_as_hashes_and_end() {
        let (_d, s) = store();
        let ann = s.add_user("ann@x", &[], "h", false).unwrap();
        s.create_session("secret-token", ann.id, "p", "csrf", 60).unwrap();
        assert_eq!(s.session("secret-token", "p").unwrap().unwrap().user.id, ann.id);
        assert!(s.session("secret-token", "other/p").unwrap().is_none(), "bound to its portal");
        let raw: Vec<u8> = s.conn().query_row("SELECT token_sha256 FROM sessions", [], |r| r.get(0)).unwrap();
        assert_ne!(raw, b"secret-token".to_vec());
        s.end_session("secret-token").unwrap();
        assert!(s.session("secret-token", "p").unwrap().is_none());
        s.create_session("expired", ann.id, "p", "csrf", -1).unwrap();
        assert!(s.session("expired", "p").unwrap().is_none());
    }

    #[test]
    fn reopening_keeps_everything_and_backup_copies_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("portal.db");
        {
            let s = Store::open(&p).unwrap();
            let ann = s.add_user("ann@x", &["g".into()], "h", false).unwrap();
            s.create_application(&ann, "apps/p", "a").unwrap();
        }
        let s = Store::open(&p).unwrap();
        assert_eq!(s.users().unwrap().len(), 1);
        s.backup(&d.path().join("copy.db")).unwrap();
        let copy = Store::open(&d.path().join("copy.db")).unwrap();
        assert_eq!(copy.grants().unwrap().applications.len(), 1);
        assert!(matches!(s.backup(&d.path().join("copy.db")), Err(StoreError::Conflict(_))));
    }
}
