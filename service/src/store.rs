//! The service's only state: a SQLite database (file), schema from `migrations/` applied in
//! order and recorded in `PRAGMA user_version`.
//!
//! Every state change that must happen at most once is a single conditional statement, so two
//! requests (or two replicas) racing for it cannot both win: a nonce is consumed by
//! `UPDATE … WHERE used_at IS NULL`, a verdict is unique per nonce, a release unique per
//! (nonce, secret).

use rusqlite::{params, Connection, OptionalExtension};

/// The migrations, in order; `PRAGMA user_version` is the number applied.
pub const MIGRATIONS: &[(&str, &str)] =
    &[("0001_init", include_str!("../migrations/0001_init.sql"))];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database schema version {0} is newer than this imgctl knows ({1})")]
    Newer(i64, usize),
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

#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

fn unhex(s: String) -> Vec<u8> {
    // Only this module writes these columns, always as hex.
    hex::decode(s).unwrap_or_default()
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub fn open(path: &str) -> Result<Store, StoreError> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // WAL: readers do not block the writer; the pragma answers with the mode it set.
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
        let mut store = Store { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let have: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let have_n = usize::try_from(have).unwrap_or(usize::MAX);
        if have_n > MIGRATIONS.len() {
            return Err(StoreError::Newer(have, MIGRATIONS.len()));
        }
        for (i, (_, sql)) in MIGRATIONS.iter().enumerate().skip(have_n) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(
                None,
                "user_version",
                i64::try_from(i + 1).unwrap_or(i64::MAX),
            )?;
            tx.commit()?;
        }
        Ok(())
    }

    pub fn machine(&self, id: &str) -> Result<Option<Machine>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, ek_public, ak_public, ak_name, policy, state, activation_sha256, activation_expires
                 FROM machines WHERE id = ?1",
                [id],
                |r| {
                    Ok(Machine {
                        id: r.get(0)?,
                        ek_public: unhex(r.get(1)?),
                        ak_public: unhex(r.get(2)?),
                        ak_name: unhex(r.get(3)?),
                        policy: r.get(4)?,
                        state: r.get(5)?,
                        activation_sha256: r.get(6)?,
                        activation_expires: r.get(7)?,
                    })
                },
            )
            .optional()?)
    }

    /// Records a (re-)enrolment: the machine is `pending` until it activates the credential.
    /// An `active` machine is not replaced (returns false).
    pub fn enrol(&mut self, m: &Machine, now: i64) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "INSERT INTO machines (id, ek_public, ak_public, ak_name, policy, state, activation_sha256, activation_expires, enrolled_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7, ?8)
             ON CONFLICT (id) DO UPDATE SET ak_public = excluded.ak_public, ak_name = excluded.ak_name,
               policy = excluded.policy, state = 'pending', activation_sha256 = excluded.activation_sha256,
               activation_expires = excluded.activation_expires, enrolled_at = excluded.enrolled_at
             WHERE machines.state <> 'active'",
            params![
                m.id,
                hex::encode(&m.ek_public),
                hex::encode(&m.ak_public),
                hex::encode(&m.ak_name),
                m.policy,
                m.activation_sha256,
                m.activation_expires,
                now
            ],
        )?;
        Ok(n == 1)
    }

    /// Moves a pending machine to `active` or `failed`; false when it was not pending.
    pub fn finish_activation(&mut self, id: &str, ok: bool) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE machines SET state = ?2 WHERE id = ?1 AND state = 'pending'",
            params![id, if ok { "active" } else { "failed" }],
        )?;
        Ok(n == 1)
    }

    pub fn add_nonce(
        &mut self,
        nonce: &[u8],
        machine: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO nonces (nonce, machine, expires_at) VALUES (?1, ?2, ?3)",
            params![hex::encode(nonce), machine, expires_at],
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
        let n = self.conn.execute(
            "UPDATE nonces SET used_at = ?3 WHERE nonce = ?1 AND machine = ?2 AND used_at IS NULL AND expires_at > ?3",
            params![hex_nonce, machine, now],
        )?;
        if n == 1 {
            return Ok(NonceUse::Consumed);
        }
        let row: Option<(String, i64, Option<i64>)> = self
            .conn
            .query_row(
                "SELECT machine, expires_at, used_at FROM nonces WHERE nonce = ?1",
                [&hex_nonce],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        Ok(match row {
            None => NonceUse::Unknown,
            Some((m, _, _)) if m != machine => NonceUse::OtherMachine,
            Some((_, _, Some(_))) => NonceUse::Used,
            Some(_) => NonceUse::Expired,
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
        let tx = self.conn.transaction()?;
        let nonce_hex = hex::encode(nonce);
        tx.execute(
            "INSERT INTO verdicts (machine, nonce, accepted, evidence_sha256, policy, policy_version, log_checkpoint, findings, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![machine, nonce_hex, accepted, evidence_sha256, policy, policy_version, log_checkpoint, findings, now],
        )?;
        let id = tx.last_insert_rowid();
        for secret in releases {
            tx.execute(
                "INSERT INTO releases (verdict, machine, nonce, secret, released_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, machine, nonce_hex, secret, now],
            )?;
        }
        tx.commit()?;
        Ok(id)
    }

    pub fn verdicts(&self, machine: &str) -> Result<Vec<VerdictRow>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT id, nonce, accepted, evidence_sha256, policy, policy_version, log_checkpoint, findings, created_at
             FROM verdicts WHERE machine = ?1 ORDER BY id",
        )?;
        let rows = st.query_map([machine], |r| {
            Ok(VerdictRow {
                id: r.get(0)?,
                nonce: r.get(1)?,
                accepted: r.get(2)?,
                evidence_sha256: r.get(3)?,
                policy: r.get(4)?,
                policy_version: r.get(5)?,
                log_checkpoint: r.get(6)?,
                findings: r.get(7)?,
                created_at: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every release recorded for a machine: (verdict id, nonce, secret name).
    pub fn releases(&self, machine: &str) -> Result<Vec<(i64, String, String)>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT verdict, nonce, secret FROM releases WHERE machine = ?1 ORDER BY id",
        )?;
        let rows = st.query_map([machine], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
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
        let s = Store::open(dir.path().join("db").to_str().unwrap()).unwrap();
        assert_eq!(s.verdicts("aa").unwrap().len(), 1);
    }
}
