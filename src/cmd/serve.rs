//! `imgctl serve --config FILE`: the fleet attestation service (imgctl-service) on HTTP.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use imgctl_service::service::{Config, Service};

/// Run the attestation service: enrol machines (EK + AK, proved by credential activation),
/// challenge them, verify their evidence against the policy, release secrets on ACCEPT.
///
/// The API is described in service/openapi.yaml; state is kept in the SQLite database the
/// configuration names (created with its schema on first start). Prints the URL it listens
/// on to stdout.
///
/// Example: imgctl serve --config /etc/imgctl/serve.yaml
#[derive(Debug, Parser)]
pub struct Args {
    /// The service configuration (YAML): listen, database, nonce_ttl_seconds, ek_ca_files, tls
    /// (certificate, key), log (source, vkey, witness_policy), verdict_log (dir, key), policy
    /// (name, version, file, checkpoint, secrets).
    #[arg(long)]
    pub config: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(&a.config)?;
    let listen = config.listen.clone();
    let tls = config.tls.clone();
    let service =
        Service::open(config).with_context(|| format!("--config {}", a.config.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("starting the HTTP runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        eprintln!("imgctl: attestation service on {scheme}://{addr}/");
        crate::output::outln!("{scheme}://{addr}");
        let router = imgctl_service::server::router(service);
        match tls {
            Some(tls) => imgctl_service::server::serve_tls(listener, router, tls)
                .await
                .context("serving")?,
            None => axum::serve(listener, router).await.context("serving")?,
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
