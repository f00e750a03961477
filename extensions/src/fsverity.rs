//! fs-verity file digests (kernel `Documentation/filesystems/fsverity.rst`: SHA-256, 4 KiB
//! blocks, no salt; the digest of the `fsverity_descriptor`), computed with the `fs-verity`
//! crate. They let a verifier pin single files of an extension, e.g. in an IMA/fs-verity policy.
//! Printed as `sha256:HEX`, the form `fsverity digest` prints.

use sha2::Digest;

/// Streaming fs-verity digest of one file's content.
#[derive(Clone, Default)]
pub struct FsVerityHasher(fs_verity::FsVeritySha256<[u8; 0]>);

impl std::fmt::Debug for FsVerityHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FsVerityHasher")
    }
}

impl FsVerityHasher {
    pub fn update(&mut self, data: &[u8]) {
        Digest::update(&mut self.0, data);
    }

    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

/// `sha256:HEX` for a whole buffer.
pub fn digest_string(data: &[u8]) -> String {
    let mut h = FsVerityHasher::default();
    h.update(data);
    format!("sha256:{}", hex::encode(h.finish()))
}
