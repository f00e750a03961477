//! `imgctl sign-pe`: an Authenticode (Secure Boot) signature for one PE image, made in Rust.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use imgctl_measure::authenticode_sign::ExistingSignatures;

/// Sign a PE image (a UKI, a kernel, a boot loader) for UEFI Secure Boot, as `sbsign` does but
/// reproducibly: the same image, key and certificate give the same bytes (no signing time).
///
/// The signature carries the image's SHA-256 Authenticode hash; `sbverify --cert` and
/// `osslsigncode verify` accept it. An image whose size is not a multiple of 8 is padded with
/// zeros first (as sbsign does), so that the certificate table is aligned.
///
/// Keys: PEM RSA or ECDSA P-256 (PKCS#8, PKCS#1, SEC1), or a key on a PKCS#11 token named by a
/// `pkcs11:` URI (RFC 7512) with --pkcs11-module; firmware accepts RSA-2048 keys.
///
/// Example: imgctl sign-pe images/demo/demo.efi -o demo.signed.efi --key db.key --certificate db.crt
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The PE image to sign.
    input: PathBuf,
    /// Where to write the signed image (atomically; never over the input).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// PEM private key (the Secure Boot db key), or a PKCS#11 URI
    /// (`pkcs11:token=T;object=K?pin-source=FILE`).
    #[arg(long, value_name = "FILE|URI")]
    key: PathBuf,
    #[command(flatten)]
    pkcs11: crate::cmd::sign_pcrs::Pkcs11Args,
    /// The key's X.509 certificate (PEM or DER); must hold the key's public key (checked).
    #[arg(long, value_name = "FILE")]
    certificate: PathBuf,
    /// If the image is already signed, drop its signatures first (the result equals signing
    /// the unsigned image).
    #[arg(long, conflicts_with = "append")]
    replace: bool,
    /// If the image is already signed, keep its signatures and add this one after them.
    #[arg(long)]
    append: bool,
    /// The key's passphrase (the first line of FILE), for an encrypted PKCS#8 key. Without
    /// it imgctl asks on the terminal, and only when stdin is one.
    #[arg(long, value_name = "FILE")]
    key_passphrase_file: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut outputs =
        imgctl_fsio::Transaction::with_inputs([&args.input, &args.key, &args.certificate]);
    outputs.check(&args.output)?;
    let passphrase =
        crate::cmd::sign_pcrs::key_passphrase(&args.key, args.key_passphrase_file.as_deref())?;
    let signer = imgctl_extensions::sign::Signer::open(
        &args.key,
        &args.certificate,
        passphrase.as_deref(),
        args.pkcs11.pkcs11_module.as_deref(),
    )?;
    let data = imgctl_fsio::read_bounded(&args.input, crate::uki_input::MAX_INPUT, "a PE image")?;
    let existing = if args.replace {
        ExistingSignatures::Replace
    } else if args.append {
        ExistingSignatures::Append
    } else {
        ExistingSignatures::Refuse
    };
    let signed = signer
        .sign_pe(&data, existing)
        .with_context(|| args.input.display().to_string())?;
    outputs.add(&args.output, &signed)?;
    outputs.commit()?;
    Ok(ExitCode::SUCCESS)
}
