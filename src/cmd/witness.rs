//! `imgctl log witness`: a C2SP tlog-witness HTTP service (`POST /add-checkpoint`).
//!
//! The decisions are [`imgctl_tlog::witness::Witness::decide`]'s; this module is the HTTP edge
//! (axum on a single-threaded tokio runtime) and the state file. Requests are handled one at a
//! time under a mutex: the check of `old` against the recorded size and the write of the new
//! record are one step, and the record is on disk (temporary file, fsync, rename, fsync of the
//! folder) before the cosignature is sent.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use imgctl_tlog::note::{NoteSigner, NoteVerifier, VerifierKind};
use imgctl_tlog::store::WitnessStore;
use imgctl_tlog::witness::{Witness, WitnessState, MAX_REQUEST};

/// Run a C2SP tlog-witness: cosign checkpoints of the given logs that are consistent with the
/// last one it cosigned (POST <URL>/add-checkpoint).
///
/// Example: imgctl log witness --key w1.key --name witness.example/w1 --state w1/ --listen 127.0.0.1:7380 --log-vkey @log.vkey
#[derive(Debug, clap::Args)]
pub struct WitnessArgs {
    /// The witness's signer key (PRIVATE+KEY+..., type 0x04 cosignature/v1). Created with
    /// --name if missing (its verifier key is written beside it, .vkey).
    #[arg(long)]
    key: PathBuf,
    /// The witness name (the key's name) for a new key, e.g. witness.example/w1.
    #[arg(long)]
    name: Option<String>,
    /// Folder for the witness's record of the latest cosigned checkpoint per log.
    #[arg(long)]
    state: PathBuf,
    /// Address to listen on; port 0 picks a free port. The URL is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:7380")]
    listen: String,
    /// A log's verifier key (its name is the log's origin), or @FILE; repeatable.
    #[arg(long)]
    log_vkey: Vec<String>,
    /// A C2SP tlog-policy file: its `log` lines are the logs this witness follows.
    #[arg(long)]
    policy: Option<PathBuf>,
}

struct Shared {
    witness: Witness,
    store: WitnessStore,
    state: Mutex<WitnessState>,
}

fn load_or_create_key(path: &Path, name: Option<&str>) -> anyhow::Result<NoteSigner> {
    if path.exists() {
        let s = crate::cmd::log::load_signer(path)?;
        if let Some(n) = name {
            if n != s.name() {
                bail!("--name {n} differs from the key's name {}", s.name());
            }
        }
        if s.verifier().kind != VerifierKind::CosignatureV1 {
            bail!(
                "key {}: a witness key is of type 0x04 (cosignature/v1), this one signs notes",
                path.display()
            );
        }
        return Ok(s);
    }
    let name = name.context("--name is needed to create a new witness key")?;
    let s = NoteSigner::generate(name, VerifierKind::CosignatureV1)?;
    let mut tx = imgctl_fsio::Transaction::new();
    tx.add_new_secret(path, format!("{}\n", s.skey()).as_bytes())?;
    tx.add(
        &path.with_extension("vkey"),
        format!("{}\n", s.verifier().vkey()).as_bytes(),
    )?;
    tx.commit()?;
    eprintln!(
        "imgctl: created witness key {} (verifier key beside it, .vkey)",
        path.display()
    );
    Ok(s)
}

fn log_keys(a: &WitnessArgs) -> anyhow::Result<Vec<NoteVerifier>> {
    let mut keys = Vec::new();
    for v in &a.log_vkey {
        keys.push(
            NoteVerifier::parse_vkey(&crate::cmd::log::key_arg(v)?)
                .with_context(|| format!("--log-vkey {v}"))?,
        );
    }
    if let Some(p) = &a.policy {
        let bytes = imgctl_fsio::read_bounded(
            p,
            imgctl_tlog::policy::MAX_POLICY_LEN as u64,
            "a witness policy",
        )?;
        let t = imgctl_tlog::TrustPolicy::parse(&bytes).with_context(|| p.display().to_string())?;
        keys.extend(t.logs.into_iter().map(|l| l.key));
    }
    if keys.is_empty() {
        bail!("no log to witness: give --log-vkey or --policy with `log` lines");
    }
    Ok(keys)
}

pub fn run(a: WitnessArgs) -> anyhow::Result<ExitCode> {
    let signer = load_or_create_key(&a.key, a.name.as_deref())?;
    let logs = log_keys(&a)?;
    let witness = Witness::new(signer, &logs)?;
    let (store, state) =
        WitnessStore::open(&a.state).with_context(|| format!("--state {}", a.state.display()))?;
    let shared = Arc::new(Shared {
        witness,
        store,
        state: Mutex::new(state),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("starting the HTTP runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        let addr = listener.local_addr()?;
        let vkey = shared.witness.verifier().vkey();
        let origins: Vec<&str> = shared.witness.origins().collect();
        eprintln!(
            "imgctl: witness {vkey} for {} on http://{addr}/",
            origins.join(", ")
        );
        crate::output::outln!("http://{addr}");
        let app = axum::Router::new()
            .route("/add-checkpoint", axum::routing::post(add_checkpoint))
            .layer(DefaultBodyLimit::max(MAX_REQUEST))
            .with_state(shared);
        axum::serve(listener, app).await.context("serving")?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn add_checkpoint(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    match tokio::task::spawn_blocking(move || s.handle(&body)).await {
        Ok((status, ctype, body)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, [(header::CONTENT_TYPE, ctype)], body).into_response()
        }
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response(),
    }
}

impl Shared {
    /// One request, start to end, under the state lock.
    fn handle(&self, body: &[u8]) -> (u16, &'static str, String) {
        const TEXT: &str = "text/plain; charset=utf-8";
        let Ok(mut state) = self.state.lock() else {
            return (500, TEXT, "witness state lock poisoned\n".into());
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs());
        match self.witness.decide(&state, body, now) {
            Ok(a) => {
                let mut next = state.clone();
                next.logs.insert(a.origin.clone(), a.cosigned);
                // Persisted before the cosignature leaves: a crash after this keeps the size.
                if let Err(e) = self.store.save(&next) {
                    eprintln!("imgctl: witness: cannot record {}: {e}", a.origin);
                    return (500, TEXT, "cannot record the checkpoint\n".into());
                }
                *state = next;
                eprintln!(
                    "imgctl: witness: cosigned {} at size {}",
                    a.origin, a.cosigned.size
                );
                (200, TEXT, a.body)
            }
            Err(r) => {
                eprintln!("imgctl: witness: refused: {r}");
                (r.status(), r.content_type(), r.body())
            }
        }
    }
}
