//! The two databases behind the store, behind one small interface: statements are written
//! once, with `?N` placeholders (PostgreSQL's `$N` are put in for it), over integers, text
//! and bytes (flags are integers in both).
//!
//! - **SQLite** (the default): one connection in WAL mode with `synchronous=FULL`; a write is
//!   on disk when it returns.
//! - **PostgreSQL** (`postgres://…`): several control-plane replicas share it. Connections
//!   run on a small runtime of their own, so the store's calls stay synchronous (they are
//!   made from blocking threads); a write the gateway must hear of sends `NOTIFY
//!   atrium_portal`, and every replica listening republishes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A value bound to, or read from, a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum V {
    /// NULL.
    Null,
    /// An integer (also a flag: 0 or 1).
    I(i64),
    /// Text.
    T(String),
    /// Bytes.
    B(Vec<u8>),
}

impl V {
    /// The integer (0 for anything else).
    pub fn i(&self) -> i64 {
        match self {
            V::I(i) => *i,
            _ => 0,
        }
    }

    /// The integer, or none for NULL.
    pub fn opt_i(&self) -> Option<i64> {
        match self {
            V::I(i) => Some(*i),
            _ => None,
        }
    }

    /// The text (empty for anything else).
    pub fn t(&self) -> String {
        match self {
            V::T(s) => s.clone(),
            _ => String::new(),
        }
    }

    /// The bytes (empty for anything else).
    pub fn b(&self) -> Vec<u8> {
        match self {
            V::B(b) => b.clone(),
            _ => Vec::new(),
        }
    }
}

impl From<i64> for V {
    fn from(i: i64) -> V {
        V::I(i)
    }
}
impl From<bool> for V {
    fn from(b: bool) -> V {
        V::I(i64::from(b))
    }
}
impl From<&str> for V {
    fn from(s: &str) -> V {
        V::T(s.to_string())
    }
}
impl From<&String> for V {
    fn from(s: &String) -> V {
        V::T(s.clone())
    }
}
impl From<String> for V {
    fn from(s: String) -> V {
        V::T(s)
    }
}
impl From<Vec<u8>> for V {
    fn from(b: Vec<u8>) -> V {
        V::B(b)
    }
}
impl From<Option<i64>> for V {
    fn from(i: Option<i64>) -> V {
        i.map_or(V::Null, V::I)
    }
}

/// Why a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A unique or foreign-key constraint.
    #[error("{0}")]
    Constraint(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// A database.
pub trait Backend: Send + Sync {
    /// Runs a statement; the rows it changed.
    fn execute(&self, sql: &str, params: &[V]) -> Result<u64, DbError>;
    /// Runs a query; its rows.
    fn query(&self, sql: &str, params: &[V]) -> Result<Vec<Vec<V>>, DbError>;
    /// Applies the migrations not applied yet, in order, each in a transaction (one replica
    /// at a time); the version before.
    fn migrate(&self, migrations: &[&str]) -> Result<i64, DbError>;
    /// Tells the other replicas that the gateway's view changed (no-op alone).
    fn notify(&self) {}
    /// Where changes made elsewhere are heard (none: only this process writes).
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// A consistent copy into the file `to` (SQLite only).
    fn backup(&self, to: &std::path::Path) -> Result<(), DbError>;
    /// Which dialect to write DDL in.
    fn is_postgres(&self) -> bool;
}

// ---- SQLite ----

/// SQLite through one connection.
pub struct Sqlite {
    conn: Mutex<rusqlite::Connection>,
}

fn sqlite_err(e: rusqlite::Error) -> DbError {
    if let rusqlite::Error::SqliteFailure(f, msg) = &e {
        if f.code == rusqlite::ErrorCode::ConstraintViolation {
            return DbError::Constraint(msg.clone().unwrap_or_else(|| "already exists".into()));
        }
    }
    DbError::Other(e.to_string())
}

fn to_sql(v: &V) -> rusqlite::types::Value {
    match v {
        V::Null => rusqlite::types::Value::Null,
        V::I(i) => rusqlite::types::Value::Integer(*i),
        V::T(s) => rusqlite::types::Value::Text(s.clone()),
        V::B(b) => rusqlite::types::Value::Blob(b.clone()),
    }
}

impl Sqlite {
    /// Opens (creating) the file at `path`: WAL, `synchronous=FULL`, foreign keys on.
    pub fn open(path: &std::path::Path) -> Result<Sqlite, DbError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = rusqlite::Connection::open(path).map_err(sqlite_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sqlite_err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(sqlite_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(sqlite_err)?;
        conn.pragma_update(None, "foreign_keys", true).map_err(sqlite_err)?;
        Ok(Sqlite { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        // Every write is a transaction of its own: a poisoned lock is still consistent.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Backend for Sqlite {
    fn execute(&self, sql: &str, params: &[V]) -> Result<u64, DbError> {
        let p: Vec<rusqlite::types::Value> = params.iter().map(to_sql).collect();
        self.conn().execute(sql, rusqlite::params_from_iter(p)).map(|n| n as u64).map_err(sqlite_err)
    }

    fn query(&self, sql: &str, params: &[V]) -> Result<Vec<Vec<V>>, DbError> {
        let p: Vec<rusqlite::types::Value> = params.iter().map(to_sql).collect();
        let c = self.conn();
        let mut st = c.prepare(sql).map_err(sqlite_err)?;
        let n = st.column_count();
        let rows = st
            .query_map(rusqlite::params_from_iter(p), |r| {
                (0..n)
                    .map(|i| {
                        Ok(match r.get_ref(i)? {
                            rusqlite::types::ValueRef::Null => V::Null,
                            rusqlite::types::ValueRef::Integer(i) => V::I(i),
                            rusqlite::types::ValueRef::Real(f) => V::I(f as i64),
                            rusqlite::types::ValueRef::Text(t) => V::T(String::from_utf8_lossy(t).into_owned()),
                            rusqlite::types::ValueRef::Blob(b) => V::B(b.to_vec()),
                        })
                    })
                    .collect::<rusqlite::Result<Vec<V>>>()
            })
            .map_err(sqlite_err)?;
        rows.collect::<Result<_, _>>().map_err(sqlite_err)
    }

    fn migrate(&self, migrations: &[&str]) -> Result<i64, DbError> {
        let mut c = self.conn();
        let version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(sqlite_err)?;
        check_version(version, migrations.len())?;
        for (i, m) in migrations.iter().enumerate().skip(version as usize) {
            let tx = c.transaction().map_err(sqlite_err)?;
            tx.execute_batch(m).map_err(sqlite_err)?;
            tx.pragma_update(None, "user_version", i as i64 + 1).map_err(sqlite_err)?;
            tx.commit().map_err(sqlite_err)?;
        }
        Ok(version)
    }

    fn backup(&self, to: &std::path::Path) -> Result<(), DbError> {
        self.conn().execute("VACUUM INTO ?1", [to.to_string_lossy().to_string()]).map(|_| ()).map_err(sqlite_err)
    }

    fn is_postgres(&self) -> bool {
        false
    }
}

fn check_version(version: i64, known: usize) -> Result<(), DbError> {
    if version > known as i64 {
        return Err(DbError::Other(format!(
            "schema version {version} is newer than this atrium knows ({known}); upgrade atrium or restore a backup"
        )));
    }
    Ok(())
}

// ---- PostgreSQL ----

/// PostgreSQL through a few pipelined connections, on a runtime of their own.
pub struct Postgres {
    rt: Option<tokio::runtime::Runtime>,
    url: String,
    clients: Vec<Mutex<Option<Arc<tokio_postgres::Client>>>>,
    next: AtomicUsize,
    changes: tokio::sync::watch::Receiver<u64>,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// `?N` placeholders as PostgreSQL's `$N` (a `?` not followed by a digit, or inside a
/// quoted literal, stays).
pub fn dollar_params(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => quoted = !quoted,
            '?' if !quoted && chars.peek().is_some_and(|n| n.is_ascii_digit()) => {
                out.push('$');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

fn pg_err(e: tokio_postgres::Error) -> DbError {
    if let Some(db) = e.as_db_error() {
        let c = db.code();
        if *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            || *c == tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION
        {
            return DbError::Constraint(db.message().to_string());
        }
        return DbError::Other(db.message().to_string());
    }
    DbError::Other(e.to_string())
}

/// The channel replicas hear each other on.
const CHANNEL: &str = "atrium_portal";

impl Postgres {
    /// Connects to `url` (`postgres://user@host:port/db`; TLS is not built: use a loopback
    /// or otherwise protected network) and starts listening for other replicas' changes.
    pub fn open(url: &str) -> Result<Postgres, DbError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("atrium-postgres")
            .enable_all()
            .build()
            .map_err(|e| DbError::Other(format!("starting the PostgreSQL runtime: {e}")))?;
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        let listen_url = url.to_string();
        // The listener: a connection of its own whose notifications bump the counter; it
        // reconnects after a failure.
        rt.spawn(async move {
            let mut n = 0u64;
            loop {
                match tokio_postgres::connect(&listen_url, tokio_postgres::NoTls).await {
                    Ok((client, mut conn)) => {
                        let (ntx, mut nrx) = tokio::sync::mpsc::unbounded_channel();
                        let driver = tokio::spawn(async move {
                            loop {
                                match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                                    Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                                        let _ = ntx.send(());
                                    }
                                    Some(Ok(_)) => {}
                                    Some(Err(_)) | None => return,
                                }
                            }
                        });
                        if client.batch_execute(&format!("LISTEN {CHANNEL}")).await.is_ok() {
                            // Changes made while no one listened are not lost: say so.
                            n += 1;
                            let _ = tx.send(n);
                            while nrx.recv().await.is_some() {
                                n += 1;
                                let _ = tx.send(n);
                            }
                        }
                        driver.abort();
                    }
                    Err(e) => tracing::warn!(error = %e, "portal store: listening for other replicas' changes failed; retrying"),
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
        let pg = Postgres {
            url: url.to_string(),
            clients: (0..4).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            changes: rx,
            rt: Some(rt),
        };
        pg.client()?;
        Ok(pg)
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("the runtime lives as long as the store")
    }

    /// A connected client (reconnecting one that closed).
    fn client(&self) -> Result<Arc<tokio_postgres::Client>, DbError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        let mut slot = self.clients[i].lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let url = self.url.clone();
        let client = self.rt().block_on(async move {
            let connect = tokio_postgres::connect(&url, tokio_postgres::NoTls);
            let (client, conn) = tokio::time::timeout(std::time::Duration::from_secs(10), connect)
                .await
                .map_err(|_| DbError::Other("PostgreSQL did not accept a connection within 10 s".into()))?
                .map_err(pg_err)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::warn!(error = %e, "portal store: a PostgreSQL connection closed");
                }
            });
            Ok::<_, DbError>(client)
        })?;
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    fn run<T>(&self, f: impl std::future::Future<Output = Result<T, DbError>>) -> Result<T, DbError> {
        self.rt().block_on(async move {
            tokio::time::timeout(std::time::Duration::from_secs(30), f)
                .await
                .unwrap_or_else(|_| Err(DbError::Other("PostgreSQL did not answer within 30 s".into())))
        })
    }
}

/// Parameters as PostgreSQL takes them.
fn pg_params(params: &[V]) -> Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> {
    params
        .iter()
        .map(|v| -> Box<dyn tokio_postgres::types::ToSql + Sync + Send> {
            match v {
                V::Null => Box::new(Option::<i64>::None),
                V::I(i) => Box::new(*i),
                V::T(s) => Box::new(s.clone()),
                V::B(b) => Box::new(b.clone()),
            }
        })
        .collect()
}

fn pg_row(r: &tokio_postgres::Row) -> Vec<V> {
    use tokio_postgres::types::Type;
    (0..r.len())
        .map(|i| {
            let t = r.columns()[i].type_().clone();
            if t == Type::INT8 {
                r.get::<_, Option<i64>>(i).map_or(V::Null, V::I)
            } else if t == Type::INT4 {
                r.get::<_, Option<i32>>(i).map_or(V::Null, |x| V::I(i64::from(x)))
            } else if t == Type::BYTEA {
                r.get::<_, Option<Vec<u8>>>(i).map_or(V::Null, V::B)
            } else {
                r.get::<_, Option<String>>(i).map_or(V::Null, V::T)
            }
        })
        .collect()
}

impl Backend for Postgres {
    fn execute(&self, sql: &str, params: &[V]) -> Result<u64, DbError> {
        let c = self.client()?;
        let (sql, p) = (dollar_params(sql), pg_params(params));
        self.run(async move {
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = p.iter().map(|b| b.as_ref() as _).collect();
            c.execute(sql.as_str(), &refs).await.map_err(pg_err)
        })
    }

    fn query(&self, sql: &str, params: &[V]) -> Result<Vec<Vec<V>>, DbError> {
        let c = self.client()?;
        let (sql, p) = (dollar_params(sql), pg_params(params));
        self.run(async move {
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = p.iter().map(|b| b.as_ref() as _).collect();
            let rows = c.query(sql.as_str(), &refs).await.map_err(pg_err)?;
            Ok(rows.iter().map(pg_row).collect())
        })
    }

    fn migrate(&self, migrations: &[&str]) -> Result<i64, DbError> {
        let url = self.url.clone();
        let migrations: Vec<String> = migrations.iter().map(|m| m.to_string()).collect();
        self.run(async move {
            // A connection of its own: the migration is one transaction under an advisory
            // lock, so replicas starting together migrate once.
            let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.map_err(pg_err)?;
            let driver = tokio::spawn(conn);
            let tx = client.transaction().await.map_err(pg_err)?;
            tx.batch_execute("SELECT pg_advisory_xact_lock(7312001); CREATE TABLE IF NOT EXISTS atrium_schema (version BIGINT NOT NULL)")
                .await
                .map_err(pg_err)?;
            let version: i64 = match tx.query_opt("SELECT version FROM atrium_schema", &[]).await.map_err(pg_err)? {
                Some(r) => r.get(0),
                None => {
                    tx.execute("INSERT INTO atrium_schema (version) VALUES (0)", &[]).await.map_err(pg_err)?;
                    0
                }
            };
            check_version(version, migrations.len())?;
            for m in migrations.iter().skip(version as usize) {
                tx.batch_execute(m).await.map_err(pg_err)?;
            }
            tx.execute("UPDATE atrium_schema SET version = $1", &[&(migrations.len() as i64)]).await.map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            drop(client);
            let _ = driver.await;
            Ok(version)
        })
    }

    fn notify(&self) {
        if let Err(e) = self.execute(&format!("NOTIFY {CHANNEL}"), &[]) {
            tracing::warn!(error = %e, "portal store: telling other replicas failed (they read the store again within seconds)");
        }
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.changes.clone())
    }

    fn backup(&self, _to: &std::path::Path) -> Result<(), DbError> {
        Err(DbError::Other("a PostgreSQL store is backed up with pg_dump (and restored with pg_restore)".into()))
    }

    fn is_postgres(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars() {
        assert_eq!(dollar_params("SELECT a FROM t WHERE x = ?1 AND y = ?2"), "SELECT a FROM t WHERE x = $1 AND y = $2");
        assert_eq!(
            dollar_params("SELECT '?1', b ? 'x' FROM t WHERE x = ?10"),
            "SELECT '?1', b ? 'x' FROM t WHERE x = $10"
        );
    }

    #[test]
    fn sqlite_reads_back_what_it_wrote() {
        let d = tempfile::tempdir().unwrap();
        let db = Sqlite::open(&d.path().join("x.db")).unwrap();
        assert_eq!(db.migrate(&["CREATE TABLE t (a INTEGER, b TEXT, c BLOB, d INTEGER)"]).unwrap(), 0);
        assert_eq!(db.migrate(&["CREATE TABLE t (a INTEGER, b TEXT, c BLOB, d INTEGER)"]).unwrap(), 1, "applied once");
        db.execute("INSERT INTO t VALUES (?1, ?2, ?3, ?4)", &[V::I(1), "x".into(), V::B(vec![1, 2]), V::Null]).unwrap();
        assert_eq!(
            db.query("SELECT a, b, c, d FROM t", &[]).unwrap(),
            vec![vec![V::I(1), V::T("x".into()), V::B(vec![1, 2]), V::Null]]
        );
        assert!(matches!(db.migrate(&[]), Err(DbError::Other(_))), "a newer schema is refused");
    }
}
