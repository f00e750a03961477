//! The service's only state: a database, SQLite (a file; the default) or PostgreSQL (a
//! `postgresql://` or `host=… dbname=…` connection string, for replicas sharing one
//! database). One schema, `migrations/{sqlite,postgres}/`, applied in order and recorded in
//! `schema_migrations`; the queries are the same text for both (`?N` parameters are written
//! `$N` for PostgreSQL).
//!
//! No lock in the process guards the state: every request takes a connection from a pool
//! ([`r2d2`]; several per replica) and every state change is one database transaction whose
//! conditions are in SQL, so two requests, or two replicas on one PostgreSQL, racing for it
//! cannot both win. A nonce is consumed by `UPDATE … WHERE used_at IS NULL AND expires_at > now`
//! in the same transaction that inserts its verdict (unique per nonce) and its releases (unique
//! per (nonce, secret)): a consumed nonce always has its verdict, whoever dies when. SQLite runs
//! in WAL mode with a busy timeout and takes the write lock at `BEGIN IMMEDIATE`; PostgreSQL at
//! READ COMMITTED, where the second `UPDATE` of a nonce waits for the first to commit and then
//! finds it used.

/// The migrations, in order: (name, SQLite text, PostgreSQL text).
pub const MIGRATIONS: &[(&str, &str, &str)] = &[
    (
        "0001_init",
        include_str!("../migrations/sqlite/0001_init.sql"),
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        "0002_log_checkpoints",
        include_str!("../migrations/sqlite/0002_log_checkpoints.sql"),
        include_str!("../migrations/postgres/0002_log_checkpoints.sql"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("database {path}: {source}")]
    OpenPg {
        path: String,
        source: postgres::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database: {0}")]
    Pg(#[from] postgres::Error),
    #[error("database schema version {0} is newer than this imgctl knows ({1})")]
    Newer(i64, usize),
    #[error("database: column {0}: unexpected type")]
    Type(usize),
    #[error("database connection pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// Rolls a verdict's transaction back: the stored checkpoint moved (never reported).
    #[error("the stored log checkpoint moved")]
    CheckpointMoved,
    /// Rolls a verdict's transaction back: the nonce could not be consumed (never reported).
    #[error("the nonce could not be consumed")]
    NonceLost,
}

/// A machine's enrolment state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub id: String,
    pub ek_public: Vec<u8>,
    pub ak_public: Vec<u8>,
    pub ak_name: Vec<u8>,
    pub policy: String,
    pub state: String,
    pub activation_sha256: String,
    pub activation_expires: i64,
}

/// Why a nonce cannot be consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceUse {
    Unknown,
    OtherMachine,
    Used,
    Expired,
}

/// Why a verdict was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The nonce cannot be consumed.
    Nonce(NonceUse),
    /// The log checkpoint stored was moved by another request since it was read: check
    /// against the new one and try again.
    Checkpoint,
}

/// A log checkpoint a verdict was checked against, to store in its transaction in place of
/// `old` (the one stored when the check ran, `None` when there was none).
#[derive(Debug, Clone, Copy)]
pub struct CheckpointAdvance<'a> {
    pub origin: &'a str,
    pub old: Option<&'a str>,
    pub note: &'a str,
    pub size: i64,
}

/// A verdict to store, with the names of the secrets released on it.
#[derive(Debug, Clone, Copy)]
pub struct NewVerdict<'a> {
    pub machine: &'a str,
    pub nonce: &'a [u8],
    pub accepted: bool,
    pub evidence_sha256: &'a str,
    pub policy: &'a str,
    pub policy_version: i64,
    pub log_checkpoint: Option<&'a str>,
    pub findings: &'a str,
    pub releases: &'a [String],
    pub now: i64,
    /// With a transparency log: its checkpoint to store as the last one verified.
    pub advance: Option<CheckpointAdvance<'a>>,
}

/// A stored verdict, as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictRow {
    pub id: i64,
    pub nonce: String,
    pub accepted: bool,
    pub evidence_sha256: String,
    pub policy: String,
    pub policy_version: i64,
    pub log_checkpoint: Option<String>,
    pub findings: String,
    pub created_at: i64,
}

/// A value passed to or read from the database.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Null,
    Int(i64),
    Text(String),
    Bool(bool),
}

impl Val {
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        match self {
            Val::Int(v) => Ok(*v),
            _ => Err(StoreError::Type(i)),
        }
    }
    fn text(&self, i: usize) -> Result<String, StoreError> {
        match self {
            Val::Text(v) => Ok(v.clone()),
            _ => Err(StoreError::Type(i)),
        }
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self {
            Val::Null => Ok(None),
            v => v.int(i).map(Some),
        }
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self {
            Val::Null => Ok(None),
            v => v.text(i).map(Some),
        }
    }
    /// SQLite keeps booleans as integers.
    fn bool(&self, i: usize) -> Result<bool, StoreError> {
        match self {
            Val::Bool(b) => Ok(*b),
            Val::Int(v) => Ok(*v != 0),
            _ => Err(StoreError::Type(i)),
        }
    }
}

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value};
        Ok(ToSqlOutput::Owned(match self {
            Val::Null => Value::Null,
            Val::Int(v) => Value::Integer(*v),
            Val::Text(v) => Value::Text(v.clone()),
            Val::Bool(b) => Value::Integer(i64::from(*b)),
        }))
    }
}

/// One database connection.
enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(Box<postgres::Client>),
}

/// Opens connections for the pool.
#[derive(Debug)]
struct Manager {
    path: String,
}

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = StoreError;

    fn connect(&self) -> Result<Conn, StoreError> {
        connect(&self.path)
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), StoreError> {
        conn.batch("SELECT 1")
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        match conn {
            Conn::Sqlite(_) => false,
            Conn::Postgres(c) => c.is_closed(),
        }
    }
}

fn connect(path: &str) -> Result<Conn, StoreError> {
    if is_postgres(path) {
        let c = postgres::Client::connect(path, postgres::NoTls).map_err(|source| {
            StoreError::OpenPg {
                path: path.to_owned(),
                source,
            }
        })?;
        Ok(Conn::Postgres(Box::new(c)))
    } else {
        let conn = rusqlite::Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // WAL: readers do not block the writer; the pragma answers with the mode it set.
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
        Ok(Conn::Sqlite(conn))
    }
}

/// Connections per process: requests beyond this wait for one (PostgreSQL's default
/// `max_connections` of 100 leaves room for several replicas).
pub const POOL_SIZE: u32 = 8;

/// The service's database: a pool of connections; cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Store {
    pool: r2d2::Pool<Manager>,
    postgres: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.postgres {
            "Store(PostgreSQL)"
        } else {
            "Store(SQLite)"
        })
    }
}

/// Whether a `database` setting names PostgreSQL rather than a SQLite file.
pub fn is_postgres(database: &str) -> bool {
    database.starts_with("postgresql://")
        || database.starts_with("postgres://")
        || database.contains("dbname=")
}

fn pg_sql(sql: &str) -> String {
    sql.replace('?', "$")
}

fn unhex(s: String) -> Vec<u8> {
    // Only this module writes these columns, always as hex.
    hex::decode(s).unwrap_or_default()
}

fn t(s: &str) -> Val {
    Val::Text(s.to_owned())
}

impl Conn {
    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        match self {
            Conn::Sqlite(c) => c.execute_batch(sql)?,
            Conn::Postgres(c) => c.batch_execute(sql)?,
        }
        Ok(())
    }

    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        Ok(match self {
            Conn::Sqlite(c) => c.execute(sql, rusqlite::params_from_iter(params.iter()))? as u64,
            Conn::Postgres(c) => {
                let p = pg_params(params);
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    p.iter().map(|b| b.as_ref()).collect();
                c.execute(&pg_sql(sql), &refs)?
            }
        })
    }
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Vec<Val>>, StoreError> {
        match self {
            Conn::Sqlite(c) => {
                let mut st = c.prepare(sql)?;
                let n = st.column_count();
                let rows = st.query_map(rusqlite::params_from_iter(params.iter()), |r| {
                    (0..n)
                        .map(|i| {
                            Ok(match r.get_ref(i)? {
                                rusqlite::types::ValueRef::Null => Val::Null,
                                rusqlite::types::ValueRef::Integer(v) => Val::Int(v),
                                rusqlite::types::ValueRef::Text(v) => {
                                    Val::Text(String::from_utf8_lossy(v).into_owned())
                                }
                                _ => Val::Null,
                            })
                        })
                        .collect::<rusqlite::Result<Vec<Val>>>()
                })?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            }
            Conn::Postgres(c) => {
                let p = pg_params(params);
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    p.iter().map(|b| b.as_ref()).collect();
                let rows = c.query(&pg_sql(sql), &refs)?;
                rows.iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| {
                                use postgres::types::Type;
                                let ty = r.columns().get(i).map(|c| c.type_().clone());
                                Ok(match ty {
                                    Some(Type::INT8) => {
                                        r.try_get::<_, Option<i64>>(i)?.map_or(Val::Null, Val::Int)
                                    }
                                    Some(Type::INT4) => r
                                        .try_get::<_, Option<i32>>(i)?
                                        .map_or(Val::Null, |v| Val::Int(i64::from(v))),
                                    Some(Type::BOOL) => r
                                        .try_get::<_, Option<bool>>(i)?
                                        .map_or(Val::Null, Val::Bool),
                                    Some(Type::TEXT) | Some(Type::VARCHAR) => r
                                        .try_get::<_, Option<String>>(i)?
                                        .map_or(Val::Null, Val::Text),
                                    _ => return Err(StoreError::Type(i)),
                                })
                            })
                            .collect()
                    })
                    .collect()
            }
        }
    }

    fn query_one(&mut self, sql: &str, params: &[Val]) -> Result<Option<Vec<Val>>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Runs `f` in a transaction: committed when it returns Ok, rolled back otherwise. SQLite
    /// takes the write lock at the start (`BEGIN IMMEDIATE`), so a transaction that reads and
    /// then writes waits for another writer (busy timeout) instead of failing on upgrade.
    fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.batch(match self {
            Conn::Sqlite(_) => "BEGIN IMMEDIATE",
            Conn::Postgres(_) => "BEGIN",
        })?;
        match f(self) {
            Ok(v) => {
                self.batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        self.batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL)",
        )?;
        // Replicas starting together on one PostgreSQL: one migrates, the others wait.
        let pg = matches!(self, Conn::Postgres(_));
        self.transaction(|s| {
            if pg {
                s.batch("LOCK TABLE schema_migrations IN EXCLUSIVE MODE")?;
            }
            let have = s
                .query_one(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                    &[],
                )?
                .and_then(|r| r.first().cloned())
                .unwrap_or(Val::Int(0))
                .int(0)?;
            let have_n = usize::try_from(have).unwrap_or(usize::MAX);
            if have_n > MIGRATIONS.len() {
                return Err(StoreError::Newer(have, MIGRATIONS.len()));
            }
            for (i, (name, lite, post)) in MIGRATIONS.iter().enumerate().skip(have_n) {
                s.batch(if pg { post } else { lite })?;
                let v = i64::try_from(i + 1).unwrap_or(i64::MAX);
                s.exec(
                    "INSERT INTO schema_migrations (version, name) VALUES (?1, ?2)",
                    &[Val::Int(v), t(name)],
                )?;
            }
            Ok(())
        })
    }
}

impl Store {
    /// Opens the database `path` names, creating it (SQLite) and applying pending migrations:
    /// `postgresql://…`, `postgres://…` or a `host=… dbname=…` string is PostgreSQL, anything
    /// else a SQLite file.
    pub fn open(path: &str) -> Result<Store, StoreError> {
        // The first connection migrates, and names the database in its error if it cannot.
        let mut first = connect(path)?;
        first.migrate()?;
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(std::time::Duration::from_secs(30))
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(Manager {
                path: path.to_owned(),
            });
        Ok(Store {
            pool,
            postgres: is_postgres(path),
        })
    }

    fn conn(&self) -> Result<r2d2::PooledConnection<Manager>, StoreError> {
        Ok(self.pool.get()?)
    }

    pub fn machine(&self, id: &str) -> Result<Option<Machine>, StoreError> {
        let Some(r) = self.conn()?.query_one(
            "SELECT id, ek_public, ak_public, ak_name, policy, state, activation_sha256, activation_expires
             FROM machines WHERE id = ?1",
            &[t(id)],
        )?
        else {
            return Ok(None);
        };
        let col = |i: usize| r.get(i).cloned().unwrap_or(Val::Null);
        Ok(Some(Machine {
            id: col(0).text(0)?,
            ek_public: unhex(col(1).text(1)?),
            ak_public: unhex(col(2).text(2)?),
            ak_name: unhex(col(3).text(3)?),
            policy: col(4).text(4)?,
            state: col(5).text(5)?,
            activation_sha256: col(6).text(6)?,
            activation_expires: col(7).int(7)?,
        }))
    }

    /// Records a (re-)enrolment: the machine is `pending` until it activates the credential.
    /// An `active` machine is not replaced (returns false).
    pub fn enrol(&self, m: &Machine, now: i64) -> Result<bool, StoreError> {
        let n = self.conn()?.exec(
            "INSERT INTO machines (id, ek_public, ak_public, ak_name, policy, state, activation_sha256, activation_expires, enrolled_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7, ?8)
             ON CONFLICT (id) DO UPDATE SET ak_public = excluded.ak_public, ak_name = excluded.ak_name,
               policy = excluded.policy, state = 'pending', activation_sha256 = excluded.activation_sha256,
               activation_expires = excluded.activation_expires, enrolled_at = excluded.enrolled_at
             WHERE machines.state <> 'active'",
            &[
                t(&m.id),
                Val::Text(hex::encode(&m.ek_public)),
                Val::Text(hex::encode(&m.ak_public)),
                Val::Text(hex::encode(&m.ak_name)),
                t(&m.policy),
                t(&m.activation_sha256),
                Val::Int(m.activation_expires),
                Val::Int(now),
            ],
        )?;
        Ok(n == 1)
    }

    /// Moves a pending machine to `active` or `failed`; false when it was not pending.
    pub fn finish_activation(&self, id: &str, ok: bool) -> Result<bool, StoreError> {
        let n = self.conn()?.exec(
            "UPDATE machines SET state = ?2 WHERE id = ?1 AND state = 'pending'",
            &[t(id), t(if ok { "active" } else { "failed" })],
        )?;
        Ok(n == 1)
    }

    pub fn add_nonce(
        &self,
        nonce: &[u8],
        machine: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.conn()?.exec(
            "INSERT INTO nonces (nonce, machine, expires_at) VALUES (?1, ?2, ?3)",
            &[
                Val::Text(hex::encode(nonce)),
                t(machine),
                Val::Int(expires_at),
            ],
        )?;
        Ok(())
    }

    /// Why `nonce` cannot be consumed by `machine` at `now`, or `None` when it can (a read,
    /// to refuse a replay before the work of verifying it; the consuming is in
    /// [`Store::add_verdict`]).
    pub fn nonce_state(
        &self,
        nonce: &[u8],
        machine: &str,
        now: i64,
    ) -> Result<Option<NonceUse>, StoreError> {
        let row = self.conn()?.query_one(
            "SELECT machine, expires_at, used_at FROM nonces WHERE nonce = ?1",
            &[Val::Text(hex::encode(nonce))],
        )?;
        let Some(r) = row else {
            return Ok(Some(NonceUse::Unknown));
        };
        let col = |i: usize| r.get(i).cloned().unwrap_or(Val::Null);
        Ok(if col(0).text(0)? != machine {
            Some(NonceUse::OtherMachine)
        } else if col(2).opt_int(2)?.is_some() {
            Some(NonceUse::Used)
        } else if col(1).int(1)? <= now {
            Some(NonceUse::Expired)
        } else {
            None
        })
    }

    /// Consumes the nonce and stores the verdict and the releases made on it, in one
    /// transaction: the nonce is consumed by one conditional UPDATE (unused, unexpired, this
    /// machine's), so of any number of requests or replicas racing with it one wins; the others
    /// learn why they lost ([`NonceUse`]) and nothing of theirs is stored. A verdict is unique
    /// per nonce and a release per (nonce, secret) besides, in the schema. With `advance`,
    /// the log checkpoint is replaced in the same transaction only if it is still the one the
    /// verdict was checked against ([`Lost::Checkpoint`] otherwise, and nothing is stored).
    pub fn add_verdict(&self, v: &NewVerdict<'_>) -> Result<Result<i64, Lost>, StoreError> {
        let nonce_hex = hex::encode(v.nonce);
        let mut conn = self.conn()?;
        let won = conn.transaction(|s| {
            if let Some(a) = &v.advance {
                let n = match a.old {
                    Some(old) => s.exec(
                        "UPDATE log_checkpoints SET size = ?2, note = ?3, updated_at = ?4 WHERE origin = ?1 AND note = ?5",
                        &[t(a.origin), Val::Int(a.size), t(a.note), Val::Int(v.now), t(old)],
                    )?,
                    None => s.exec(
                        "INSERT INTO log_checkpoints (origin, size, note, updated_at) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (origin) DO NOTHING",
                        &[t(a.origin), Val::Int(a.size), t(a.note), Val::Int(v.now)],
                    )?,
                };
                if n != 1 {
                    return Err(StoreError::CheckpointMoved);
                }
            }
            let n = s.exec(
                "UPDATE nonces SET used_at = ?3 WHERE nonce = ?1 AND machine = ?2 AND used_at IS NULL AND expires_at > ?3",
                &[t(&nonce_hex), t(v.machine), Val::Int(v.now)],
            )?;
            if n != 1 {
                // Nothing of this verdict may stay, the checkpoint advance included.
                return Err(StoreError::NonceLost);
            }
            let id = s
                .query_one(
                    "INSERT INTO verdicts (machine, nonce, accepted, evidence_sha256, policy, policy_version, log_checkpoint, findings, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING id",
                    &[
                        t(v.machine),
                        t(&nonce_hex),
                        Val::Bool(v.accepted),
                        t(v.evidence_sha256),
                        t(v.policy),
                        Val::Int(v.policy_version),
                        v.log_checkpoint.map_or(Val::Null, t),
                        t(v.findings),
                        Val::Int(v.now),
                    ],
                )?
                .and_then(|r| r.first().cloned())
                .unwrap_or(Val::Null)
                .int(0)?;
            for secret in v.releases {
                s.exec(
                    "INSERT INTO releases (verdict, machine, nonce, secret, released_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    &[Val::Int(id), t(v.machine), t(&nonce_hex), t(secret), Val::Int(v.now)],
                )?;
            }
            Ok(id)
        });
        drop(conn);
        match won {
            Ok(id) => Ok(Ok(id)),
            Err(StoreError::CheckpointMoved) => Ok(Err(Lost::Checkpoint)),
            // Lost: say why. A nonce that could still be consumed here (it cannot, the UPDATE
            // just found it unusable) would be a bug; call it used rather than report success.
            Err(StoreError::NonceLost) => Ok(Err(Lost::Nonce(
                self.nonce_state(v.nonce, v.machine, v.now)?
                    .unwrap_or(NonceUse::Used),
            ))),
            Err(e) => Err(e),
        }
    }

    /// The last checkpoint of the log `origin` a verdict was checked against (its note).
    pub fn log_checkpoint(&self, origin: &str) -> Result<Option<String>, StoreError> {
        match self.conn()?.query_one(
            "SELECT note FROM log_checkpoints WHERE origin = ?1",
            &[t(origin)],
        )? {
            Some(r) => Ok(Some(r.first().cloned().unwrap_or(Val::Null).text(0)?)),
            None => Ok(None),
        }
    }

    pub fn verdicts(&self, machine: &str) -> Result<Vec<VerdictRow>, StoreError> {
        let rows = self.conn()?.query(
            "SELECT id, nonce, accepted, evidence_sha256, policy, policy_version, log_checkpoint, findings, created_at
             FROM verdicts WHERE machine = ?1 ORDER BY id",
            &[t(machine)],
        )?;
        rows.into_iter()
            .map(|r| {
                let col = |i: usize| r.get(i).cloned().unwrap_or(Val::Null);
                Ok(VerdictRow {
                    id: col(0).int(0)?,
                    nonce: col(1).text(1)?,
                    accepted: col(2).bool(2)?,
                    evidence_sha256: col(3).text(3)?,
                    policy: col(4).text(4)?,
                    policy_version: col(5).int(5)?,
                    log_checkpoint: col(6).opt_text(6)?,
                    findings: col(7).text(7)?,
                    created_at: col(8).int(8)?,
                })
            })
            .collect()
    }

    /// Every release recorded for a machine: (verdict id, nonce, secret name).
    pub fn releases(&self, machine: &str) -> Result<Vec<(i64, String, String)>, StoreError> {
        let rows = self.conn()?.query(
            "SELECT verdict, nonce, secret FROM releases WHERE machine = ?1 ORDER BY id",
            &[t(machine)],
        )?;
        rows.into_iter()
            .map(|r| {
                let col = |i: usize| r.get(i).cloned().unwrap_or(Val::Null);
                Ok((col(0).int(0)?, col(1).text(1)?, col(2).text(2)?))
            })
            .collect()
    }
}

fn pg_params(params: &[Val]) -> Vec<Box<dyn postgres::types::ToSql + Sync>> {
    params
        .iter()
        .map(|v| -> Box<dyn postgres::types::ToSql + Sync> {
            match v {
                Val::Null => Box::new(Option::<String>::None),
                Val::Int(i) => Box::new(*i),
                Val::Text(s) => Box::new(s.clone()),
                Val::Bool(b) => Box::new(*b),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(id: &str) -> Machine {
        Machine {
            id: id.into(),
            ek_public: vec![1],
            ak_public: vec![2],
            ak_name: vec![3],
            policy: "demo".into(),
            state: "pending".into(),
            activation_sha256: "00".into(),
            activation_expires: 100,
        }
    }

    fn verdict<'a>(
        machine: &'a str,
        nonce: &'a [u8],
        releases: &'a [String],
        now: i64,
    ) -> NewVerdict<'a> {
        NewVerdict {
            machine,
            nonce,
            accepted: true,
            evidence_sha256: "d",
            policy: "demo",
            policy_version: 1,
            log_checkpoint: None,
            findings: "[]",
            releases,
            now,
            advance: None,
        }
    }

    #[test]
    fn a_nonce_is_consumed_once_by_its_machine_before_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("db").to_str().unwrap()).unwrap();
        assert!(s.enrol(&machine("aa"), 0).unwrap());
        assert!(s.enrol(&machine("bb"), 0).unwrap());
        s.add_nonce(b"n1", "aa", 10).unwrap();
        let k = ["k".to_owned()];
        assert_eq!(
            s.add_verdict(&verdict("bb", b"n1", &k, 5)).unwrap(),
            Err(Lost::Nonce(NonceUse::OtherMachine))
        );
        assert_eq!(
            s.add_verdict(&verdict("aa", b"n1", &k, 10)).unwrap(),
            Err(Lost::Nonce(NonceUse::Expired))
        );
        assert_eq!(s.nonce_state(b"n1", "aa", 5).unwrap(), None);
        let id = s
            .add_verdict(&verdict("aa", b"n1", &k, 5))
            .unwrap()
            .unwrap();
        assert_eq!(
            s.add_verdict(&verdict("aa", b"n1", &k, 6)).unwrap(),
            Err(Lost::Nonce(NonceUse::Used))
        );
        assert_eq!(s.nonce_state(b"n1", "aa", 6).unwrap(), Some(NonceUse::Used));
        assert_eq!(
            s.add_verdict(&verdict("aa", b"n2", &k, 6)).unwrap(),
            Err(Lost::Nonce(NonceUse::Unknown))
        );
        // The losers stored nothing: one verdict, one release.
        assert_eq!(s.verdicts("aa").unwrap().len(), 1);
        assert_eq!(s.verdicts("aa").unwrap()[0].id, id);
        assert_eq!(s.releases("aa").unwrap().len(), 1);
        assert!(s.verdicts("bb").unwrap().is_empty());
        // An active machine is not re-enrolled.
        assert!(s.finish_activation("aa", true).unwrap());
        assert!(!s.enrol(&machine("aa"), 1).unwrap());
        // Reopening applies no migration twice.
        drop(s);
        let s = Store::open(dir.path().join("db").to_str().unwrap()).unwrap();
        assert_eq!(s.verdicts("aa").unwrap().len(), 1);
    }

    /// Many threads, each with its own pooled connection, race to answer one nonce: exactly
    /// one wins, with one verdict and one release; every other is told the nonce is used.
    #[test]
    fn racing_answers_to_one_nonce_store_one_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("db").to_str().unwrap()).unwrap();
        assert!(s.enrol(&machine("aa"), 0).unwrap());
        for round in 0..5u8 {
            let nonce = [round; 32];
            s.add_nonce(&nonce, "aa", 100).unwrap();
            let barrier = std::sync::Barrier::new(16);
            let results: Vec<_> = std::thread::scope(|sc| {
                let hs: Vec<_> = (0..16)
                    .map(|_| {
                        sc.spawn(|| {
                            let k = ["k".to_owned()];
                            barrier.wait();
                            s.add_verdict(&verdict("aa", &nonce, &k, 5)).unwrap()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(
                results.iter().filter(|r| r.is_ok()).count(),
                1,
                "{results:?}"
            );
            assert!(results
                .iter()
                .all(|r| r.is_ok() || *r == Err(Lost::Nonce(NonceUse::Used))));
        }
        assert_eq!(s.verdicts("aa").unwrap().len(), 5);
        assert_eq!(s.releases("aa").unwrap().len(), 5);
    }

    /// The log checkpoint moves only from the note a verdict was checked against: a verdict
    /// checked against a checkpoint another one has replaced stores nothing (nonce unused),
    /// and one whose nonce is lost does not move the checkpoint.
    #[test]
    fn the_log_checkpoint_moves_only_from_the_one_checked_against() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("db").to_str().unwrap()).unwrap();
        assert!(s.enrol(&machine("aa"), 0).unwrap());
        let k: [String; 0] = [];
        let adv = |old: Option<&'static str>, note: &'static str, size| {
            Some(CheckpointAdvance {
                origin: "o",
                old,
                note,
                size,
            })
        };
        assert_eq!(s.log_checkpoint("o").unwrap(), None);
        for (n, old, note, size) in [(1u8, None, "c1", 1), (2, Some("c1"), "c2", 2)] {
            let nonce = [n];
            s.add_nonce(&nonce, "aa", 100).unwrap();
            let v = NewVerdict {
                advance: adv(old, note, size),
                ..verdict("aa", &nonce, &k, 5)
            };
            assert!(s.add_verdict(&v).unwrap().is_ok());
            assert_eq!(s.log_checkpoint("o").unwrap().as_deref(), Some(note));
        }
        // Checked against c1 (or against none) while c2 is stored: lost, nonce still usable.
        s.add_nonce(&[3], "aa", 100).unwrap();
        for old in [Some("c1"), None] {
            let v = NewVerdict {
                advance: adv(old, "c3", 3),
                ..verdict("aa", &[3], &k, 5)
            };
            assert_eq!(s.add_verdict(&v).unwrap(), Err(Lost::Checkpoint));
        }
        assert_eq!(s.nonce_state(&[3], "aa", 5).unwrap(), None);
        // A lost nonce rolls the advance back.
        let v = NewVerdict {
            advance: adv(Some("c2"), "c3", 3),
            ..verdict("aa", &[1], &k, 5)
        };
        assert_eq!(s.add_verdict(&v).unwrap(), Err(Lost::Nonce(NonceUse::Used)));
        assert_eq!(s.log_checkpoint("o").unwrap().as_deref(), Some("c2"));
        assert_eq!(s.verdicts("aa").unwrap().len(), 2);
    }
}
