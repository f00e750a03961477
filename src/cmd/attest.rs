//! `imgctl attest --server URL`: the machine's side of `imgctl serve`, with its TPM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Parser;
use imgctl_attest::tpm_public::TpmPublic;
use imgctl_measure::HashAlg;
use imgctl_service::api::{ActivateRequest, ChallengeRequest, EnrolRequest, EvidenceRequest};
use imgctl_service::client::Client;
use imgctl_service::credential::CredentialFile;
use imgctl_tpm::DEFAULT_TCTI;

/// Attest this machine to an imgctl attestation service and receive its released secrets.
///
/// Enrols once (sends the EK and AK public keys, activates the service's credential on the
/// TPM), asks for a nonce, quotes the PCRs over it, sends the quote with the firmware and
/// systemd event logs, and writes each secret released on ACCEPT (opened by this TPM with
/// TPM2_ActivateCredential) to `--secrets-dir/NAME` with mode 0600.
///
/// Exit status: 0 accepted; 1 rejected, refused or failed.
///
/// Example: imgctl attest --server http://verifier:8080 --secrets-dir /run/keys
#[derive(Debug, Parser)]
pub struct Args {
    /// The service's base URL (http:// or https://).
    #[arg(long)]
    pub server: String,
    /// With an https:// server: trust only the CA certificates in this PEM file (instead of
    /// the system's roots).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// TCTI of the TPM (see `imgctl tpm --help`).
    #[arg(long, default_value = DEFAULT_TCTI, env = "IMGCTL_TCTI")]
    pub tcti: String,
    /// The firmware event log.
    #[arg(
        long,
        default_value = "/sys/kernel/security/tpm0/binary_bios_measurements"
    )]
    pub event_log: PathBuf,
    /// systemd's userspace event log, when there is one.
    #[arg(long)]
    pub userspace_log: Option<PathBuf>,
    /// Bank of the quoted PCRs.
    #[arg(long, default_value = "sha256")]
    pub bank: HashAlg,
    /// PCRs to quote.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3,4,5,6,7,9,11")]
    pub pcrs: Vec<u32>,
    /// Where released secrets are written (one file per secret, mode 0600).
    #[arg(long)]
    pub secrets_dir: Option<PathBuf>,
    /// The EK's certificate (DER), which a service with EK CAs configured requires. Without
    /// this option it is read from the TPM's NV index 0x01c00002 (the RSA-2048 EK certificate
    /// of the TCG EK Credential Profile) when the TPM has one.
    #[arg(long)]
    pub ek_certificate: Option<PathBuf>,
    /// Print the service's answer as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

const MAX_LOG: u64 = imgctl_service::api::MAX_LOG as u64;

fn read_log(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    read_bounded(path, MAX_LOG)
}

fn read_bounded(path: &std::path::Path, max: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut out = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max + 1).read_to_end(&mut out))
        .with_context(|| format!("reading {}", path.display()))?;
    if out.len() as u64 > max {
        bail!("{}: larger than {max} bytes", path.display());
    }
    Ok(out)
}

fn secret_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let client = match &a.ca_file {
        Some(f) => Client::with_ca(
            &a.server,
            &f.display().to_string(),
            &read_bounded(f, imgctl_service::ek_cert::MAX_CERT as u64 * 16)?,
        )?,
        None => Client::new(&a.server),
    };
    let event_log = read_log(&a.event_log)?;
    let userspace_log = a.userspace_log.as_deref().map(read_log).transpose()?;
    let ek_certificate = a
        .ek_certificate
        .as_deref()
        .map(|p| read_bounded(p, imgctl_service::ek_cert::MAX_CERT as u64))
        .transpose()?;
    let mut tpm = crate::cmd::tpm::open(&a.tcti)?;
    let ek_certificate = match ek_certificate {
        Some(c) => Some(c),
        None => tpm
            .ek_certificate()
            .context("reading the EK certificate from the TPM's NV index 0x01c00002")?,
    };
    let ek_public = tpm.ek_public()?;
    let ak_public = tpm.ak_public()?;
    let machine = hex::encode(TpmPublic::parse(&ek_public)?.name);
    match client.enrol(&EnrolRequest {
        ek_public,
        ak_public,
        ek_certificate,
    }) {
        Ok(e) => {
            let file = imgctl_service::api::decode_blob(&e.credential)
                .context("the service's enrolment credential")?;
            let cred =
                CredentialFile::parse(&file).context("the service's enrolment credential")?;
            let secret = tpm
                .activate_credential(body(&cred.0.id_object), body(&cred.0.encrypted_secret))
                .context("activating the enrolment credential on the TPM")?;
            client.activate(&ActivateRequest {
                machine: machine.clone(),
                secret,
            })?;
            eprintln!("imgctl: enrolled as {machine}");
        }
        Err(e) if e.kind() == Some("already-enrolled") => {}
        Err(e) => return Err(e.into()),
    }
    let ch = client.challenge(&ChallengeRequest {
        machine: machine.clone(),
    })?;
    let nonce = hex::decode(&ch.nonce).context("the service's nonce is not hex")?;
    let quote = tpm.quote(&nonce, &[(a.bank, a.pcrs.clone())])?;
    let answer = client.evidence(&EvidenceRequest {
        machine,
        nonce,
        quote: quote.attest,
        signature: quote.signature,
        event_log,
        userspace_log,
    })?;
    if a.json {
        crate::output::outln!("{}", serde_json::to_string_pretty(&answer)?);
    }
    if !answer.accepted {
        eprintln!(
            "imgctl: REJECTED (verdict {}): {}",
            answer.verdict_id,
            answer.findings["findings"][0]["message"]
                .as_str()
                .unwrap_or("see the verdict's findings")
        );
        return Ok(ExitCode::FAILURE);
    }
    eprintln!("imgctl: ACCEPTED (verdict {})", answer.verdict_id);
    if let Some(dir) = &a.secrets_dir {
        let mut t = imgctl_fsio::Transaction::new();
        for r in &answer.releases {
            if !secret_name_ok(&r.name) {
                bail!(
                    "the service released a secret with an unusable name {:?}",
                    r.name
                );
            }
            let file = imgctl_service::api::decode_blob(&r.credential)
                .with_context(|| format!("released secret {}", r.name))?;
            let cred = CredentialFile::parse(&file)
                .with_context(|| format!("released secret {}", r.name))?;
            let secret = tpm
                .activate_credential(body(&cred.0.id_object), body(&cred.0.encrypted_secret))
                .with_context(|| format!("opening released secret {} on the TPM", r.name))?;
            t.add_secret(&dir.join(&r.name), &secret)?;
        }
        t.commit()?;
        for r in &answer.releases {
            eprintln!(
                "imgctl: secret {} written to {}",
                r.name,
                dir.join(&r.name).display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A TPM2B's contents (its two-byte size dropped; CredentialFile::parse checked it).
fn body(tpm2b: &[u8]) -> &[u8] {
    tpm2b.get(2..).unwrap_or_default()
}
