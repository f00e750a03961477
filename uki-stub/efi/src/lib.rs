//! imgctl-stub: a UEFI stub for Unified Kernel Images that measures exactly as systemd-stub does.
//!
//! 1. Finds its own PE sections through EFI_LOADED_IMAGE_PROTOCOL.
//! 2. Measures every present UKI section into PCR 11 in systemd's canonical order, two `EV_IPL`
//!    events each (the name with one NUL, then `VirtualSize` bytes of content), with the UTF-16
//!    section name as event data — the list and order come from `measure/src/pcr11.rs`, the
//!    same code `imgctl predict-pcrs` predicts with (upstream semantics).
//! 3. Takes a passed command line (LoadOptions) unless Secure Boot is on and the UKI has
//!    `.cmdline`; mangles it as systemd does and measures it into PCR 12 (UTF-16 with NUL).
//!    Otherwise the `.cmdline` section is the command line (not measured again).
//! 4. Loads `.linux` with LoadImage, serves `.initrd` through the LINUX_EFI_INITRD_MEDIA_GUID
//!    LoadFile2 protocol, passes the command line as the kernel's LoadOptions, StartImage.
//!
//! Every failure prints `imgctl-stub: error: ...` on the console and returns to the firmware,
//! after giving back what was allocated or installed (guards in `efi`).
//!
//! Not done (systemd-stub does them): multi-profile UKIs (refused), addons, credentials and
//! sysext cpios, devicetree, splash, random seed, the `Stub*`/`Loader*` EFI variables, the
//! UEFI-shell argument form of LoadOptions, TPM 1.2 and confidential-computing measurement.
#![no_std]
// Unsafe code is allowed only where the stub meets the firmware: `efi` (raw tables, protocols,
// pointers the firmware hands over), `mem` (the C memory functions) and the entry point.
// `link_section` for .sbat/.sdmagic counts as unsafe too. Everything else — PE parsing, measurement order, command-line handling — is safe code.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

#[allow(unsafe_code)] // reason: the FFI boundary with the firmware
mod efi;
mod image;
#[allow(unsafe_code)] // reason: memcpy & co, called by compiler-generated code
mod mem;
#[allow(dead_code)]
#[path = "../../../measure/src/pcr11.rs"]
mod pcr11;

use core::fmt::Write;

use efi::{Firmware, Handle, Pool, Status, SystemTable};
use image::Image;
use pcr11::{StubSemantics, PCR_KERNEL_IMAGE, PCR_KERNEL_PARAMETERS};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `.sdmagic`: the identity `imgctl inspect` and `measure::uki::StubIdentity` read.
#[allow(unsafe_code)] // reason: link_section puts the identity into its own PE section
#[used]
#[link_section = ".sdmagic"]
static SDMAGIC: [u8; SDMAGIC_TEXT.len() + 1] = nul_terminated(SDMAGIC_TEXT);
const SDMAGIC_TEXT: &[u8] = concat!(
    "#### LoaderInfo: imgctl-stub ",
    env!("CARGO_PKG_VERSION"),
    " ####"
)
.as_bytes();

/// `.sbat`: the SBAT header line and our component line (generation 1).
#[allow(unsafe_code)] // reason: link_section puts SBAT into its own PE section
#[used]
#[link_section = ".sbat"]
static SBAT: [u8; SBAT_TEXT.len()] = copy_array(SBAT_TEXT);
const SBAT_TEXT: &[u8] = concat!(
    "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n",
    "imgctl-stub,1,imgctl,imgctl-stub,",
    env!("CARGO_PKG_VERSION"),
    ",https://example.org/imgctl\n"
)
.as_bytes();

const fn copy_array<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = s[i];
        i += 1;
    }
    out
}

const fn nul_terminated<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut i = 0;
    while i + 1 < N {
        out[i] = s[i];
        i += 1;
    }
    out
}

/// The semantics this stub implements (`StubIdentity::semantics()` maps `imgctl-stub` here).
const SEMANTICS: StubSemantics = StubSemantics::IMGCTL_STUB;

/// Console writer for formatted messages.
struct Console<'a>(&'a Firmware);

impl Write for Console<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.0.print(s);
        Ok(())
    }
}

/// A failure: what was being done, and the firmware's status for it.
struct Failure {
    what: &'static str,
    status: Status,
}

fn fail(what: &'static str, status: Status) -> Failure {
    Failure { what, status }
}

/// The firmware calls this.
///
/// # Safety
/// Called by the firmware as the image entry point, with our image handle and system table.
#[allow(unsafe_code)] // reason: the image entry point the firmware calls
#[no_mangle]
pub unsafe extern "efiapi" fn efi_main(image: Handle, st: *mut SystemTable) -> Status {
    // SAFETY: these are the entry point arguments.
    let fw = unsafe { Firmware::new(image, st) };
    match run(&fw) {
        Ok(never) => match never {},
        Err(f) => {
            let _ = writeln!(
                Console(&fw),
                "imgctl-stub: error: {}: {}. Returning to the firmware.",
                f.what,
                f.status
            );
            // Give a person at the console a moment to read it, as systemd-stub does.
            fw.stall_us(1_000_000);
            if f.status.is_error() {
                f.status
            } else {
                Status::LOAD_ERROR
            }
        }
    }
}

enum Never {}

fn run(fw: &Firmware) -> Result<Never, Failure> {
    let (own, load_options) = fw
        .own_image()
        .map_err(|s| fail("cannot read the stub's loaded image", s))?;
    let img = Image::parse(own).map_err(|e| fail(e.0, Status::LOAD_ERROR))?;
    let bad = |e: image::BadImage| fail(e.0, Status::LOAD_ERROR);
    if img.has_profiles().map_err(bad)? {
        return Err(fail(
            "multi-profile UKIs (.profile sections) are not supported by imgctl-stub",
            Status::UNSUPPORTED,
        ));
    }

    // 1. PCR 11: every present section, canonical order, name then content.
    let tpm = fw.tpm2();
    for name in SEMANTICS.measured_sections() {
        let Some(data) = img.section(name).map_err(bad)? else {
            continue;
        };
        if let Some(tpm) = &tpm {
            let (name_buf, name_len) = pcr11::name_bytes(name);
            // The description: the name in UTF-16LE (section names are ASCII).
            let mut desc = [0u8; 16];
            for (d, c) in desc.chunks_exact_mut(2).zip(name.bytes()) {
                d[0] = c;
            }
            let desc = &desc[..2 * name.len().min(8)];
            for bytes in [&name_buf[..name_len], data] {
                if let Err(s) = tpm.log_ipl_event(fw, PCR_KERNEL_IMAGE, bytes, desc) {
                    // systemd-stub logs and boots on: PCR 11 then simply will not match.
                    let _ = writeln!(
                        Console(fw),
                        "imgctl-stub: warning: measuring {name} into PCR 11 failed: {s}"
                    );
                }
            }
        }
    }

    // 2. The command line: passed (and measured into PCR 12) or built in.
    let has_cmdline = img.section(".cmdline").map_err(bad)?;
    let cmdline = match passed_cmdline(fw, load_options, has_cmdline.is_some())? {
        Some(pool) => {
            if let Some(tpm) = &tpm {
                let bytes = pool.bytes();
                let desc = &bytes[..bytes.len() - 2];
                if let Err(s) = tpm.log_ipl_event(fw, PCR_KERNEL_PARAMETERS, bytes, desc) {
                    let _ = writeln!(
                        Console(fw),
                        "imgctl-stub: warning: measuring the command line into PCR 12 failed: {s}"
                    );
                }
            }
            Some(pool)
        }
        None => match has_cmdline {
            Some(text) => Some(section_cmdline(fw, text)?),
            None => None,
        },
    };

    // 3. The kernel, its command line and its initrd.
    let linux = img
        .section(".linux")
        .map_err(bad)?
        .ok_or(fail("the UKI has no .linux section", Status::NOT_FOUND))?;
    let kernel = fw
        .load_image(linux)
        .map_err(|s| fail("LoadImage of the .linux section failed", s))?;
    if let Some(c) = &cmdline {
        kernel
            .set_load_options(c)
            .map_err(|s| fail("cannot set the kernel's LoadOptions", s))?;
    }
    let _initrd = match img.section(".initrd").map_err(bad)? {
        Some(initrd) => Some(
            fw.install_initrd(initrd)
                .map_err(|s| fail("cannot install the initrd LoadFile2 protocol", s))?,
        ),
        None => None,
    };
    let status = kernel.start();
    Err(fail("the kernel returned from StartImage", status))
}

/// The command line passed in LoadOptions, as systemd-stub's `use_load_options()` takes it:
/// not under Secure Boot when the UKI has `.cmdline`; only when the first UTF-16 unit is
/// printable; at most `LoadOptionsSize / 2` units up to a NUL; mangled. UTF-16LE with NUL.
fn passed_cmdline(fw: &Firmware, opts: &[u8], has_cmdline: bool) -> Result<Option<Pool>, Failure> {
    if has_cmdline && fw.secure_boot() {
        return Ok(None);
    }
    let mut units = opts
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]));
    match units.next() {
        Some(first) if first > 0x1f => {}
        _ => return Ok(None),
    }
    let n = opts.len() / 2;
    let mut pool = fw
        .alloc((n + 1) * 2)
        .map_err(|s| fail("cannot allocate the command line", s))?;
    let buf = pool.units_mut();
    for (d, c) in buf.iter_mut().zip(opts.chunks_exact(2)) {
        *d = u16::from_le_bytes([c[0], c[1]]);
    }
    let len = pcr11::mangle_cmdline(&mut buf[..n]);
    buf[len] = 0;
    pool.truncate((len + 1) * 2);
    Ok(Some(pool))
}

/// The `.cmdline` section as the kernel's LoadOptions: UTF-8 up to the first NUL, as UTF-16
/// (invalid sequences become U+FFFD), mangled, with NUL.
fn section_cmdline(fw: &Firmware, text: &[u8]) -> Result<Pool, Failure> {
    let end = text.iter().position(|&c| c == 0).unwrap_or(text.len());
    let text = &text[..end];
    let mut pool = fw
        .alloc((text.len() + 1) * 2)
        .map_err(|s| fail("cannot allocate the command line", s))?;
    let buf = pool.units_mut();
    let mut n = 0;
    for chunk in text.utf8_chunks() {
        let invalid = if chunk.invalid().is_empty() {
            ""
        } else {
            "\u{fffd}"
        };
        for u in chunk.valid().encode_utf16().chain(invalid.encode_utf16()) {
            if let Some(d) = buf.get_mut(n) {
                *d = u;
                n += 1;
            }
        }
    }
    let len = pcr11::mangle_cmdline(&mut buf[..n]);
    buf[len] = 0;
    pool.truncate((len + 1) * 2);
    Ok(pool)
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    if let Some(fw) = Firmware::from_panic() {
        fw.print("imgctl-stub: error: internal error (panic). Returning to the firmware.\n");
        fw.exit(Status::ABORTED);
    }
    loop {
        core::hint::spin_loop();
    }
}
