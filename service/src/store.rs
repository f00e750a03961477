//! The service's only state: a database, SQLite (a file; the default) or PostgreSQL (a
//! `postgresql://` or `host=… dbname=…` connection string, for replicas sharing one
//! database). One schema, `migrations/{sqlite,postgres}/`, applied in order and recorded in
//! `schema_migrations`; the queries are the same text for both (`?N` parameters are written
//! `$N` for PostgreSQL).
//!
//! Every state change that must happen at most once is a single conditional statement, so two
//! requests (or two replicas) racing for it cannot both win: a nonce is consumed by
//! `UPDATE … WHERE used_at IS NULL`, a verdict is unique per nonce, a release unique per
//! (nonce, secret).

/// The migrations, in order: (name, SQLite text, PostgreSQL text).
pub const MIGRATIONS: &[(&str, &str, &str)] = &[(
    "0001_init",
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/postgres/0001_init.sql"),
)];

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

/// What happened to a nonce when the evidence answering it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceUse {
    /// Unused, unexpired, this machine's: now consumed.
    Consumed,
    Unknown,
    OtherMachine,
    Used,
    Expired,
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

enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(Box<postgres::Client>),
}

/// The service's database.
pub struct Store {
    conn: Conn,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.conn {
            Conn::Sqlite(_) => "Store(SQLite)",
            Conn::Postgres(_) => "Store(PostgreSQL)",
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

impl Store {
    /// Opens the database `path` names, creating it (SQLite) and applying pending migrations:
    /// `postgresql://…`, `postgres://…` or a `host=… dbname=…` string is PostgreSQL, anything
    /// else a SQLite file.
    pub fn open(path: &str) -> Result<Store, StoreError> {
        let conn = if is_postgres(path) {
            let c = postgres::Client::connect(path, postgres::NoTls).map_err(|source| {
                StoreError::OpenPg {
                    path: path.to_owned(),
                    source,
                }
            })?;
            Conn::Postgres(Box::new(c))
        } else {
            let conn = rusqlite::Connection::open(path).map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            // WAL: readers do not block the writer; the pragma answers with the mode it set.
            conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
            Conn::Sqlite(conn)
        };
        let mut store = Store { conn };
        store.migrate()?;
        Ok(store)
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        match &mut self.conn {
            Conn::Sqlite(c) => c.execute_batch(sql)?,
            Conn::Postgres(c) => c.batch_execute(sql)?,
        }
        Ok(())
    }

    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        Ok(match &mut self.conn {
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
        match &mut self.conn {
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

    /// Runs `f` in a transaction: committed when it returns Ok, rolled back otherwise.
    fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.batch("BEGIN")?;
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
        let pg = matches!(self.conn, Conn::Postgres(_));
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

    pub fn machine(&mut self, id: &str) -> Result<Option<Machine>, StoreError> {
        let Some(r) = self.query_one(
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
    pub fn enrol(&mut self, m: &Machine, now: i64) -> Result<bool, StoreError> {
        let n = self.exec(
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
    pub fn finish_activation(&mut self, id: &str, ok: bool) -> Result<bool, StoreError> {
        let n = self.exec(
            "UPDATE machines SET state = ?2 WHERE id = ?1 AND state = 'pending'",
            &[t(id), t(if ok { "active" } else { "failed" })],
        )?;
        Ok(n == 1)
    }

    pub fn add_nonce(
        &mut self,
        nonce: &[u8],
        machine: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO nonces (nonce, machine, expires_at) VALUES (?1, ?2, ?3)",
            &[
                Val::Text(hex::encode(nonce)),
                t(machine),
                Val::Int(expires_at),
            ],
        )?;
        Ok(())
    }

    /// Consumes a nonce for `machine` at `now`: one conditional UPDATE, so it is consumed at
    /// most once whoever asks; then says why it was not, if it was not.
    pub fn use_nonce(
        &mut self,
        nonce: &[u8],
        machine: &str,
        now: i64,
    ) -> Result<NonceUse, StoreError> {
        let hex_nonce = hex::encode(nonce);
        let n = self.exec(
            "UPDATE nonces SET used_at = ?3 WHERE nonce = ?1 AND machine = ?2 AND used_at IS NULL AND expires_at > ?3",
            &[t(&hex_nonce), t(machine), Val::Int(now)],
        )?;
        if n == 1 {
            return Ok(NonceUse::Consumed);
        }
        let row = self.query_one(
            "SELECT machine, expires_at, used_at FROM nonces WHERE nonce = ?1",
            &[t(&hex_nonce)],
        )?;
        Ok(match row {
            None => NonceUse::Unknown,
            Some(r) => {
                let col = |i: usize| r.get(i).cloned().unwrap_or(Val::Null);
                if col(0).text(0)? != machine {
                    NonceUse::OtherMachine
                } else if col(2).opt_int(2)?.is_some() {
                    NonceUse::Used
                } else {
                    NonceUse::Expired
                }
            }
        })
    }

    /// Stores a verdict and, in the same transaction, the releases made on it.
    #[allow(clippy::too_many_arguments)] // reason: one row's columns
    pub fn add_verdict(
        &mut self,
        machine: &str,
        nonce: &[u8],
        accepted: bool,
        evidence_sha256: &str,
        policy: &str,
        policy_version: i64,
        log_checkpoint: Option<&str>,
        findings: &str,
        releases: &[String],
        now: i64,
    ) -> Result<i64, StoreError> {
        let nonce_hex = hex::encode(nonce);
        self.transaction(|s| {
            let id = s
                .query_one(
                    "INSERT INTO verdicts (machine, nonce, accepted, evidence_sha256, policy, policy_version, log_checkpoint, findings, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING id",
                    &[
                        t(machine),
                        t(&nonce_hex),
                        Val::Bool(accepted),
                        t(evidence_sha256),
                        t(policy),
                        Val::Int(policy_version),
                        log_checkpoint.map_or(Val::Null, t),
                        t(findings),
                        Val::Int(now),
                    ],
                )?
                .and_then(|r| r.first().cloned())
                .unwrap_or(Val::Null)
                .int(0)?;
            for secret in releases {
                s.exec(
                    "INSERT INTO releases (verdict, machine, nonce, secret, released_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    &[Val::Int(id), t(machine), t(&nonce_hex), t(secret), Val::Int(now)],
                )?;
            }
            Ok(id)
        })
    }

    pub fn verdicts(&mut self, machine: &str) -> Result<Vec<VerdictRow>, StoreError> {
        let rows = self.query(
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
    pub fn releases(&mut self, machine: &str) -> Result<Vec<(i64, String, String)>, StoreError> {
        let rows = self.query(
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

    #[test]
    fn a_nonce_is_consumed_once_by_its_machine_before_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path().join("db").to_str().unwrap()).unwrap();
        assert!(s.enrol(&machine("aa"), 0).unwrap());
        assert!(s.enrol(&machine("bb"), 0).unwrap());
        s.add_nonce(b"n1", "aa", 10).unwrap();
        assert_eq!(s.use_nonce(b"n1", "bb", 5).unwrap(), NonceUse::OtherMachine);
        assert_eq!(s.use_nonce(b"n1", "aa", 10).unwrap(), NonceUse::Expired);
        assert_eq!(s.use_nonce(b"n1", "aa", 5).unwrap(), NonceUse::Consumed);
        assert_eq!(s.use_nonce(b"n1", "aa", 6).unwrap(), NonceUse::Used);
        assert_eq!(s.use_nonce(b"n2", "aa", 6).unwrap(), NonceUse::Unknown);
        // An active machine is not re-enrolled; a second verdict or release for one nonce fails.
        assert!(s.finish_activation("aa", true).unwrap());
        assert!(!s.enrol(&machine("aa"), 1).unwrap());
        s.add_verdict(
            "aa",
            b"n1",
            true,
            "d",
            "demo",
            1,
            None,
            "[]",
            &["k".into()],
            7,
        )
        .unwrap();
        assert!(s
            .add_verdict("aa", b"n1", true, "d", "demo", 1, None, "[]", &[], 8)
            .is_err());
        assert_eq!(s.releases("aa").unwrap().len(), 1);
        // Reopening applies no migration twice.
        drop(s);
        let mut s = Store::open(dir.path().join("db").to_str().unwrap()).unwrap();
        assert_eq!(s.verdicts("aa").unwrap().len(), 1);
    }
}
