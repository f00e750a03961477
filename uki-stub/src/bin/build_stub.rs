//! Builds imgctl-stub: `imgctl-build-stub [OUT.efi]` (default `target/uki-stub/imgctl-stub.efi`).
//! Run through `scripts/build-stub.sh`.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = manifest
        .parent()
        .map_or_else(|| manifest.join(".."), Path::to_path_buf);
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(imgctl_uki_stub::DEFAULT_OUTPUT));
    match imgctl_uki_stub::build(&repo, &out) {
        Ok(b) => {
            println!(
                "{} ({} bytes, {} base relocations)",
                b.path.display(),
                b.size,
                b.info.relocations
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("imgctl-build-stub: {e}");
            ExitCode::FAILURE
        }
    }
}
