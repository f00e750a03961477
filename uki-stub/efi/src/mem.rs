//! The C memory functions the compiler emits calls to. The host target's runtime would
//! supply them; under UEFI nobody does. `rep movsb`/`rep stosb` cannot be turned back into
//! calls to themselves by the optimiser.

use core::arch::asm;

/// # Safety
/// The C contract: `dest` and `src` valid for `n` bytes, not overlapping.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: forwarded C contract; the direction flag is clear per the calling convention.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// The C contract: `dest` and `src` valid for `n` bytes; they may overlap.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // No harmful overlap: copy forwards.
        // SAFETY: forwarded C contract.
        return unsafe { memcpy(dest, src, n) };
    }
    // dest lies inside [src, src+n): copy backwards, with the direction flag set and cleared.
    // SAFETY: forwarded C contract; n > 0 here since dest - src < n.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rcx") n => _, inout("rdi") dest.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
             options(nostack));
    }
    dest
}

/// # Safety
/// The C contract: `dest` valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: forwarded C contract.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// The C contract: `a` and `b` valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: forwarded C contract; volatile keeps the loop from becoming a memcmp call.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// # Safety
/// As `memcmp`.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}
