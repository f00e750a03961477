//! `imgctl keygen`: the keys a distribution maintainer needs, as `ukify genkey` makes them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use imgctl_extensions::keygen::{rsa_key_pair, self_signed};

use crate::output::out;

/// Make the keys a maintainer signs with, in DIR (created if missing; nothing is overwritten):
///
///   db.key, db.crt            the Secure Boot signing key (RSA-2048) and its self-signed
///                             certificate, for `imgctl sign-pe` and the firmware's db
///   pcr-private.pem,          the PCR policy key pair (RSA-2048; public key as SPKI PEM,
///   pcr-public.pem            what `.pcrpkey` holds), for `imgctl sign-pcrs`
///   PK.key, PK.crt,           with --pk-kek: a platform key and a key exchange key, to
///   KEK.key, KEK.crt          enrol our own keys on a test machine
///
/// Private keys are PKCS#8 PEM, mode 0600, unencrypted: keep DIR safe.
///
/// Example: imgctl keygen keys/ --common-name "Example Linux Secure Boot 2026"
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The folder to write the keys to.
    dir: PathBuf,
    /// The certificates' subject common name (CN); PK and KEK add " PK" and " KEK".
    #[arg(long, value_name = "NAME")]
    common_name: String,
    /// How long the certificates are valid, in days from now.
    #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
    days: u32,
    /// Also make a platform key (PK) and a key exchange key (KEK), for test machines.
    #[arg(long)]
    pk_kek: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let d = &args.dir;
    let mut names = vec!["db.key", "db.crt", "pcr-private.pem", "pcr-public.pem"];
    if args.pk_kek {
        names.extend(["PK.key", "PK.crt", "KEK.key", "KEK.crt"]);
    }
    // Refuse before any work: nothing that is there is ever replaced.
    for n in &names {
        let p = d.join(n);
        if std::fs::symlink_metadata(&p).is_ok() {
            anyhow::bail!(
                "{}: already exists; imgctl keygen never overwrites a key",
                p.display()
            );
        }
    }
    if std::fs::symlink_metadata(d).is_err() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    imgctl_fsio::check_output_dir(d)?;
    let mut tx = imgctl_fsio::Transaction::new();
    let mut identities = vec![("db", args.common_name.clone())];
    if args.pk_kek {
        identities.push(("PK", format!("{} PK", args.common_name)));
        identities.push(("KEK", format!("{} KEK", args.common_name)));
    }
    for (name, cn) in &identities {
        let id = self_signed(cn, args.days).context("--common-name")?;
        tx.add_new_secret(
            &d.join(format!("{name}.key")),
            id.key.private_pem.as_bytes(),
        )?;
        tx.add_new(
            &d.join(format!("{name}.crt")),
            id.certificate_pem.as_bytes(),
        )?;
    }
    let (_, pcr) = rsa_key_pair()?;
    tx.add_new_secret(&d.join("pcr-private.pem"), pcr.private_pem.as_bytes())?;
    tx.add_new(&d.join("pcr-public.pem"), pcr.public_pem.as_bytes())?;
    tx.commit()?;
    for n in &names {
        out!("{}\n", d.join(n).display());
    }
    Ok(ExitCode::SUCCESS)
}
