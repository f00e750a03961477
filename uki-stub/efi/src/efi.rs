//! The firmware boundary: raw UEFI tables and protocols (UEFI 2.10 §4, §7, §9; TCG EFI Protocol
//! Specification §6; Linux `LINUX_EFI_INITRD_MEDIA_GUID`), and thin safe wrappers around the few
//! services the stub uses. Every `unsafe` block of the stub is in this module; each states the
//! firmware contract it relies on. Resources are owned by guards whose `Drop` gives them back,
//! so that every error path frees what it took.

use core::ffi::c_void;
use core::fmt;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

pub type Handle = *mut c_void;

/// `EFI_STATUS`: an open set of values, kept as the integer.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Status(pub usize);

const ERROR_BIT: usize = 1 << 63;

impl Status {
    pub const SUCCESS: Status = Status(0);
    pub const LOAD_ERROR: Status = Status(ERROR_BIT | 1);
    pub const INVALID_PARAMETER: Status = Status(ERROR_BIT | 2);
    pub const UNSUPPORTED: Status = Status(ERROR_BIT | 3);
    pub const BUFFER_TOO_SMALL: Status = Status(ERROR_BIT | 5);
    pub const OUT_OF_RESOURCES: Status = Status(ERROR_BIT | 9);
    pub const NOT_FOUND: Status = Status(ERROR_BIT | 14);
    pub const ABORTED: Status = Status(ERROR_BIT | 21);
    pub const SECURITY_VIOLATION: Status = Status(ERROR_BIT | 26);

    pub fn is_error(self) -> bool {
        self.0 & ERROR_BIT != 0
    }

    fn result(self) -> Result<(), Status> {
        if self.is_error() {
            Err(self)
        } else {
            Ok(())
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            Status::SUCCESS => "EFI_SUCCESS",
            Status::LOAD_ERROR => "EFI_LOAD_ERROR",
            Status::INVALID_PARAMETER => "EFI_INVALID_PARAMETER",
            Status::UNSUPPORTED => "EFI_UNSUPPORTED",
            Status::BUFFER_TOO_SMALL => "EFI_BUFFER_TOO_SMALL",
            Status::OUT_OF_RESOURCES => "EFI_OUT_OF_RESOURCES",
            Status::NOT_FOUND => "EFI_NOT_FOUND",
            Status::ABORTED => "EFI_ABORTED",
            Status::SECURITY_VIOLATION => "EFI_SECURITY_VIOLATION",
            _ => return write!(f, "EFI status {:#x}", self.0),
        };
        f.write_str(name)
    }
}

#[repr(C)]
pub struct Guid(u32, u16, u16, [u8; 8]);

const LOADED_IMAGE_GUID: Guid = Guid(
    0x5b1b31a1,
    0x9562,
    0x11d2,
    [0x8e, 0x3f, 0x00, 0xa0, 0xc9, 0x69, 0x72, 0x3b],
);
const DEVICE_PATH_GUID: Guid = Guid(
    0x09576e91,
    0x6d3f,
    0x11d2,
    [0x8e, 0x39, 0x00, 0xa0, 0xc9, 0x69, 0x72, 0x3b],
);
const LOAD_FILE2_GUID: Guid = Guid(
    0x4006c0c1,
    0xfcb3,
    0x403e,
    [0x99, 0x6d, 0x4a, 0x6c, 0x87, 0x24, 0xe0, 0x6d],
);
const TCG2_GUID: Guid = Guid(
    0x607f766c,
    0x7455,
    0x42be,
    [0x93, 0x0b, 0xe4, 0xd7, 0x6d, 0xb2, 0x72, 0x0f],
);
const GLOBAL_VARIABLE_GUID: Guid = Guid(
    0x8be4df61,
    0x93ca,
    0x11d2,
    [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c],
);

/// A vendor media device path node (type 4, subtype 3, 20 bytes) followed by the end node.
#[repr(C, packed)]
struct VendorMediaPath {
    kind: u8,
    sub_kind: u8,
    len: [u8; 2],
    guid: Guid,
    end: [u8; 4],
}

const fn vendor_media_path(guid: Guid) -> VendorMediaPath {
    VendorMediaPath {
        kind: 4,
        sub_kind: 3,
        len: [20, 0],
        guid,
        end: [0x7f, 0xff, 4, 0],
    }
}

/// `LINUX_EFI_INITRD_MEDIA_GUID`: the kernel's EFI stub asks the handle with this device path
/// for the initrd through LoadFile2 (Linux `drivers/firmware/efi/libstub`).
static INITRD_MEDIA_PATH: VendorMediaPath = vendor_media_path(Guid(
    0x5568e427,
    0x68fc,
    0x4f3d,
    [0xac, 0x74, 0xca, 0x55, 0x52, 0x31, 0xcc, 0x68],
));
/// The device path the kernel image is loaded under: systemd-stub's `STUB_PAYLOAD_GUID`, so that
/// the firmware's image measurement and security hooks see the same path as with systemd-stub.
static KERNEL_PAYLOAD_PATH: VendorMediaPath = vendor_media_path(Guid(
    0x55c5d1f8,
    0x04cd,
    0x46b5,
    [0x8a, 0x20, 0xe5, 0x6c, 0xbb, 0x30, 0x52, 0xd0],
));

#[repr(C)]
struct TableHeader {
    signature: u64,
    revision: u32,
    header_size: u32,
    crc32: u32,
    reserved: u32,
}

#[repr(C)]
pub struct SystemTable {
    hdr: TableHeader,
    firmware_vendor: *const u16,
    firmware_revision: u32,
    console_in_handle: Handle,
    con_in: *mut c_void,
    console_out_handle: Handle,
    con_out: *mut TextOutput,
    standard_error_handle: Handle,
    std_err: *mut TextOutput,
    runtime_services: *mut RuntimeServices,
    boot_services: *mut BootServices,
}

#[repr(C)]
struct TextOutput {
    reset: usize,
    output_string: unsafe extern "efiapi" fn(*mut TextOutput, *const u16) -> Status,
}

#[repr(C)]
struct RuntimeServices {
    hdr: TableHeader,
    get_time: usize,
    set_time: usize,
    get_wakeup_time: usize,
    set_wakeup_time: usize,
    set_virtual_address_map: usize,
    convert_pointer: usize,
    get_variable: unsafe extern "efiapi" fn(
        *const u16,
        *const Guid,
        *mut u32,
        *mut usize,
        *mut c_void,
    ) -> Status,
}

#[repr(C)]
struct BootServices {
    hdr: TableHeader,
    raise_tpl: usize,
    restore_tpl: usize,
    allocate_pages: usize,
    free_pages: usize,
    get_memory_map: usize,
    allocate_pool: unsafe extern "efiapi" fn(u32, usize, *mut *mut c_void) -> Status,
    free_pool: unsafe extern "efiapi" fn(*mut c_void) -> Status,
    create_event: usize,
    set_timer: usize,
    wait_for_event: usize,
    signal_event: usize,
    close_event: usize,
    check_event: usize,
    install_protocol_interface:
        unsafe extern "efiapi" fn(*mut Handle, *const Guid, u32, *const c_void) -> Status,
    reinstall_protocol_interface: usize,
    uninstall_protocol_interface:
        unsafe extern "efiapi" fn(Handle, *const Guid, *const c_void) -> Status,
    handle_protocol: unsafe extern "efiapi" fn(Handle, *const Guid, *mut *mut c_void) -> Status,
    reserved: usize,
    register_protocol_notify: usize,
    locate_handle: usize,
    locate_device_path: usize,
    install_configuration_table: usize,
    load_image: unsafe extern "efiapi" fn(
        u8,
        Handle,
        *const c_void,
        *const c_void,
        usize,
        *mut Handle,
    ) -> Status,
    start_image: unsafe extern "efiapi" fn(Handle, *mut usize, *mut *mut u16) -> Status,
    exit: unsafe extern "efiapi" fn(Handle, Status, usize, *mut u16) -> Status,
    unload_image: unsafe extern "efiapi" fn(Handle) -> Status,
    exit_boot_services: usize,
    get_next_monotonic_count: usize,
    stall: unsafe extern "efiapi" fn(usize) -> Status,
    set_watchdog_timer: usize,
    connect_controller: usize,
    disconnect_controller: usize,
    open_protocol: usize,
    close_protocol: usize,
    open_protocol_information: usize,
    protocols_per_handle: usize,
    locate_handle_buffer: usize,
    locate_protocol:
        unsafe extern "efiapi" fn(*const Guid, *mut c_void, *mut *mut c_void) -> Status,
}

#[repr(C)]
struct LoadedImage {
    revision: u32,
    parent_handle: Handle,
    system_table: *mut SystemTable,
    device_handle: Handle,
    file_path: *mut c_void,
    reserved: *mut c_void,
    load_options_size: u32,
    load_options: *mut c_void,
    image_base: *mut c_void,
    image_size: u64,
    image_code_type: u32,
    image_data_type: u32,
    unload: usize,
}

#[repr(C)]
struct Tcg2Protocol {
    get_capability: unsafe extern "efiapi" fn(*mut Tcg2Protocol, *mut u8) -> Status,
    get_event_log: usize,
    hash_log_extend_event:
        unsafe extern "efiapi" fn(*mut Tcg2Protocol, u64, u64, u64, *const u8) -> Status,
}

/// `EfiLoaderData`, the memory type for everything the stub allocates.
const LOADER_DATA: u32 = 2;
const NATIVE_INTERFACE: u32 = 0;

/// For the panic handler only: the firmware and our image handle.
static SYSTEM_TABLE: AtomicPtr<SystemTable> = AtomicPtr::new(ptr::null_mut());
static IMAGE_HANDLE: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());

/// The firmware's services, as handed to `efi_main`.
#[derive(Clone, Copy)]
pub struct Firmware {
    st: *mut SystemTable,
    image: Handle,
}

impl Firmware {
    /// # Safety
    /// `st` and `image` must be the arguments the firmware passed to the image entry point, and
    /// boot services must not have been exited.
    pub unsafe fn new(image: Handle, st: *mut SystemTable) -> Firmware {
        SYSTEM_TABLE.store(st, Ordering::Relaxed);
        IMAGE_HANDLE.store(image, Ordering::Relaxed);
        Firmware { st, image }
    }

    /// The firmware of the running image, for the panic handler.
    pub fn from_panic() -> Option<Firmware> {
        let st = SYSTEM_TABLE.load(Ordering::Relaxed);
        let image = IMAGE_HANDLE.load(Ordering::Relaxed);
        (!st.is_null()).then_some(Firmware { st, image })
    }

    fn bs(&self) -> &BootServices {
        // SAFETY: the system table and its boot services table are valid while boot services
        // run (UEFI §4.3), which is the whole life of the stub.
        unsafe { &*(*self.st).boot_services }
    }

    /// Writes UTF-8 text to the console (ConOut; OVMF mirrors it on the serial port).
    pub fn print(&self, text: &str) {
        // SAFETY: as in `bs()`; ConOut may be null on headless firmware, then nothing is written.
        let out = unsafe { (*self.st).con_out };
        if out.is_null() {
            return;
        }
        let mut buf = [0u16; 65];
        let mut n = 0;
        let flush = |buf: &mut [u16; 65], n: &mut usize| {
            buf[*n] = 0;
            // SAFETY: `buf` is NUL-terminated UCS-2 and `out` is the firmware's ConOut.
            unsafe { ((*out).output_string)(out, buf.as_ptr()) };
            *n = 0;
        };
        for c in text.chars() {
            let mut units = [0u16; 2];
            let units = c.encode_utf16(&mut units);
            if c == '\n' {
                buf[n] = u16::from(b'\r');
                n += 1;
            }
            for &u in units.iter() {
                buf[n] = u;
                n += 1;
            }
            if n >= 60 {
                flush(&mut buf, &mut n);
            }
        }
        if n > 0 {
            flush(&mut buf, &mut n);
        }
    }

    pub fn stall_us(&self, us: usize) {
        // SAFETY: Stall only busy-waits.
        unsafe { (self.bs().stall)(us) };
    }

    /// Returns to the firmware with `status` (used by the panic handler).
    pub fn exit(&self, status: Status) -> ! {
        // SAFETY: Exit with our own image handle does not return on success (UEFI §7.4).
        unsafe { (self.bs().exit)(self.image, status, 0, ptr::null_mut()) };
        loop {
            core::hint::spin_loop();
        }
    }

    /// A pool allocation of `len` bytes, zeroed, freed on drop.
    pub fn alloc(&self, len: usize) -> Result<Pool, Status> {
        let mut p: *mut c_void = ptr::null_mut();
        // SAFETY: AllocatePool writes the new buffer's address to `p`.
        unsafe { (self.bs().allocate_pool)(LOADER_DATA, len.max(1), &mut p) }.result()?;
        if p.is_null() {
            return Err(Status::OUT_OF_RESOURCES);
        }
        // SAFETY: `p` points to `len` bytes we own until FreePool.
        unsafe { ptr::write_bytes(p.cast::<u8>(), 0, len) };
        Ok(Pool {
            fw: *self,
            ptr: p.cast(),
            len,
        })
    }

    /// Whether the `SecureBoot` variable is 1 (systemd `secure_boot_enabled()`).
    pub fn secure_boot(&self) -> bool {
        let name: [u16; 11] = [
            b'S' as u16,
            b'e' as u16,
            b'c' as u16,
            b'u' as u16,
            b'r' as u16,
            b'e' as u16,
            b'B' as u16,
            b'o' as u16,
            b'o' as u16,
            b't' as u16,
            0,
        ];
        let mut value = 0u8;
        let mut size = 1usize;
        // SAFETY: GetVariable writes at most `size` bytes into `value`.
        let status = unsafe {
            ((*(*self.st).runtime_services).get_variable)(
                name.as_ptr(),
                &GLOBAL_VARIABLE_GUID,
                ptr::null_mut(),
                &mut size,
                (&mut value as *mut u8).cast(),
            )
        };
        !status.is_error() && size == 1 && value != 0
    }

    fn loaded_image(&self, handle: Handle) -> Result<*mut LoadedImage, Status> {
        let mut li: *mut c_void = ptr::null_mut();
        // SAFETY: HandleProtocol writes the interface pointer to `li`.
        unsafe { (self.bs().handle_protocol)(handle, &LOADED_IMAGE_GUID, &mut li) }.result()?;
        if li.is_null() {
            return Err(Status::NOT_FOUND);
        }
        Ok(li.cast())
    }

    /// Our own image as loaded in memory (`ImageBase`, `ImageSize` bytes), and the raw bytes
    /// of the load options we were started with.
    pub fn own_image(&self) -> Result<(&'static [u8], &'static [u8]), Status> {
        let li = self.loaded_image(self.image)?;
        // SAFETY: the loaded image protocol describes our image, which stays loaded while we
        // run: ImageBase..ImageBase+ImageSize and LoadOptions..+LoadOptionsSize are readable.
        unsafe {
            let base = (*li).image_base.cast::<u8>();
            let size = usize::try_from((*li).image_size).map_err(|_| Status::LOAD_ERROR)?;
            if base.is_null() {
                return Err(Status::LOAD_ERROR);
            }
            let image = core::slice::from_raw_parts(base, size);
            let opts = (*li).load_options.cast::<u8>();
            let opts = if opts.is_null() {
                &[][..]
            } else {
                core::slice::from_raw_parts(opts, (*li).load_options_size as usize)
            };
            Ok((image, opts))
        }
    }

    /// The TPM 2.0 behind EFI_TCG2_PROTOCOL, when one is present (systemd
    /// `tcg2_interface_check()`: the protocol exists and reports `TPMPresentFlag`).
    pub fn tpm2(&self) -> Option<Tpm2> {
        let mut p: *mut c_void = ptr::null_mut();
        // SAFETY: LocateProtocol writes the interface pointer to `p`.
        let status = unsafe { (self.bs().locate_protocol)(&TCG2_GUID, ptr::null_mut(), &mut p) };
        if status.is_error() || p.is_null() {
            return None;
        }
        let proto = p.cast::<Tcg2Protocol>();
        // EFI_TCG2_BOOT_SERVICE_CAPABILITY (natural alignment, 36 bytes): u8 Size, two 2-byte
        // versions, u32 HashAlgorithmBitmap at 8, u32 SupportedEventLogs at 12, BOOLEAN
        // TPMPresentFlag at 16, then sizes, ManufacturerID, NumberOfPcrBanks, ActivePcrBanks.
        let mut cap = [0u8; 36];
        cap[0] = 36;
        // SAFETY: GetCapability fills at most cap[0] bytes.
        let status = unsafe { ((*proto).get_capability)(proto, cap.as_mut_ptr()) };
        if status.is_error() || cap[16] == 0 {
            return None;
        }
        Some(Tpm2 { proto })
    }

    /// Loads a PE image from memory under systemd-stub's payload device path.
    pub fn load_image(&self, data: &[u8]) -> Result<LoadedChild, Status> {
        let mut handle: Handle = ptr::null_mut();
        // SAFETY: the firmware copies `data` into a new image; `handle` receives its handle.
        unsafe {
            (self.bs().load_image)(
                0,
                self.image,
                (&KERNEL_PAYLOAD_PATH as *const VendorMediaPath).cast(),
                data.as_ptr().cast(),
                data.len(),
                &mut handle,
            )
        }
        .result()?;
        Ok(LoadedChild { fw: *self, handle })
    }

    /// Serves `initrd` to the kernel: the initrd media device path and a LoadFile2 protocol on
    /// a new handle. Uninstalled when the guard drops.
    pub fn install_initrd(&self, initrd: &'static [u8]) -> Result<InitrdGuard, Status> {
        let pool = self.alloc(core::mem::size_of::<InitrdLoader>())?;
        let loader = pool.ptr.cast::<InitrdLoader>();
        // SAFETY: `pool` is at least as large as InitrdLoader and pool memory is 8-aligned.
        unsafe {
            loader.write(InitrdLoader {
                proto: LoadFile2 {
                    load_file: initrd_load_file,
                },
                data: initrd.as_ptr(),
                len: initrd.len(),
            })
        };
        let mut handle: Handle = ptr::null_mut();
        let path = (&INITRD_MEDIA_PATH as *const VendorMediaPath).cast::<c_void>();
        // SAFETY: installs interfaces that live until the guard uninstalls them.
        unsafe {
            (self.bs().install_protocol_interface)(
                &mut handle,
                &DEVICE_PATH_GUID,
                NATIVE_INTERFACE,
                path,
            )
        }
        .result()?;
        let mut guard = InitrdGuard {
            fw: *self,
            handle,
            path: Some(path),
            loader: None,
            _pool: pool,
        };
        // SAFETY: as above, on the handle just created.
        unsafe {
            (self.bs().install_protocol_interface)(
                &mut guard.handle,
                &LOAD_FILE2_GUID,
                NATIVE_INTERFACE,
                loader.cast(),
            )
        }
        .result()?;
        guard.loader = Some(loader.cast());
        Ok(guard)
    }
}

/// Pool memory, freed on drop.
pub struct Pool {
    fw: Firmware,
    ptr: *mut u8,
    len: usize,
}

impl Pool {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: we own `len` initialised (zeroed) bytes at `ptr`.
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, exclusively borrowed.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// The buffer as UTF-16 code units (pool memory is 8-byte aligned, UEFI §7.2).
    pub fn units_mut(&mut self) -> &mut [u16] {
        // SAFETY: as in `bytes_mut`; `ptr` is 8-aligned, so u16-aligned.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.cast::<u16>(), self.len / 2) }
    }

    /// Shortens the logical length (the allocation is freed whole).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    fn as_ptr(&self) -> *const u8 {
        self.ptr
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from AllocatePool and is freed once.
        unsafe { (self.fw.bs().free_pool)(self.ptr.cast()) };
    }
}

pub struct Tpm2 {
    proto: *mut Tcg2Protocol,
}

/// `EV_IPL`.
const EV_IPL: u32 = 0x0000_000d;
/// `sizeof(EFI_TCG2_EVENT_HEADER)` (packed: u32 HeaderSize, u16 HeaderVersion, u32 PCRIndex,
/// u32 EventType).
const TCG2_EVENT_HEADER_SIZE: usize = 14;

impl Tpm2 {
    /// HashLogExtendEvent of `data` into `pcr`, logged as `EV_IPL` whose event data is
    /// `description` (UTF-16LE bytes without NUL; written with a trailing UTF-16 NUL), as
    /// systemd's `tpm2_measure_to_pcr_and_event_log()` does.
    pub fn log_ipl_event(
        &self,
        fw: &Firmware,
        pcr: u32,
        data: &[u8],
        description: &[u8],
    ) -> Result<(), Status> {
        let desc_len = description.len() + 2;
        let total = 4 + TCG2_EVENT_HEADER_SIZE + desc_len;
        let mut ev = fw.alloc(total)?;
        let b = ev.bytes_mut();
        let total32 = u32::try_from(total).map_err(|_| Status::INVALID_PARAMETER)?;
        put(b, 0, &total32.to_le_bytes());
        put(b, 4, &(TCG2_EVENT_HEADER_SIZE as u32).to_le_bytes());
        put(b, 8, &1u16.to_le_bytes());
        put(b, 10, &pcr.to_le_bytes());
        put(b, 14, &EV_IPL.to_le_bytes());
        put(b, 18, description);
        // SAFETY: `data` and the event buffer are valid for the call; the firmware reads them.
        unsafe {
            ((*self.proto).hash_log_extend_event)(
                self.proto,
                0,
                data.as_ptr() as u64,
                data.len() as u64,
                ev.as_ptr(),
            )
        }
        .result()
    }
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// A child image loaded by the stub; unloaded on drop unless it took over.
pub struct LoadedChild {
    fw: Firmware,
    handle: Handle,
}

impl LoadedChild {
    /// Sets the image's LoadOptions to `options` (UTF-16 with NUL, `size` bytes). The buffer must
    /// outlive the image's start.
    pub fn set_load_options(&self, options: &Pool) -> Result<(), Status> {
        let li = self.fw.loaded_image(self.handle)?;
        let size = u32::try_from(options.len).map_err(|_| Status::INVALID_PARAMETER)?;
        // SAFETY: the loaded image protocol of our child is ours to fill before StartImage.
        unsafe {
            (*li).load_options = options.ptr.cast();
            (*li).load_options_size = size;
        }
        Ok(())
    }

    /// StartImage; returns only when the image exits (for a kernel: it failed).
    pub fn start(&self) -> Status {
        let mut exit_size = 0usize;
        let mut exit_data: *mut u16 = ptr::null_mut();
        // SAFETY: the handle is a loaded image; exit data, if any, is freed below.
        let status =
            unsafe { (self.fw.bs().start_image)(self.handle, &mut exit_size, &mut exit_data) };
        if !exit_data.is_null() {
            // SAFETY: exit data is pool memory the caller must free (UEFI §7.4 StartImage).
            unsafe { (self.fw.bs().free_pool)(exit_data.cast()) };
        }
        status
    }
}

impl Drop for LoadedChild {
    fn drop(&mut self) {
        // SAFETY: unloads the image we loaded; a no-op error if it already exited and unloaded.
        unsafe { (self.fw.bs().unload_image)(self.handle) };
    }
}

#[repr(C)]
struct LoadFile2 {
    load_file: unsafe extern "efiapi" fn(
        *mut LoadFile2,
        *const c_void,
        u8,
        *mut usize,
        *mut c_void,
    ) -> Status,
}

/// The LoadFile2 interface with the initrd it serves; `proto` first so that the interface
/// pointer is the struct pointer.
#[repr(C)]
struct InitrdLoader {
    proto: LoadFile2,
    data: *const u8,
    len: usize,
}

/// EFI_LOAD_FILE2_PROTOCOL.LoadFile for the initrd (UEFI §13.2): the size when the buffer is
/// missing or short, else a copy of the initrd.
unsafe extern "efiapi" fn initrd_load_file(
    this: *mut LoadFile2,
    file_path: *const c_void,
    boot_policy: u8,
    size: *mut usize,
    buffer: *mut c_void,
) -> Status {
    if this.is_null() || file_path.is_null() || size.is_null() {
        return Status::INVALID_PARAMETER;
    }
    if boot_policy != 0 {
        return Status::UNSUPPORTED;
    }
    // SAFETY: `this` is the interface we installed, which is the start of an InitrdLoader;
    // `size` and `buffer` come from the caller as the protocol defines them.
    unsafe {
        let loader = this.cast::<InitrdLoader>();
        let len = (*loader).len;
        if buffer.is_null() || *size < len {
            *size = len;
            return Status::BUFFER_TOO_SMALL;
        }
        ptr::copy_nonoverlapping((*loader).data, buffer.cast::<u8>(), len);
        *size = len;
    }
    Status::SUCCESS
}

/// The installed initrd protocols; uninstalled on drop, in reverse order.
pub struct InitrdGuard {
    fw: Firmware,
    handle: Handle,
    path: Option<*const c_void>,
    loader: Option<*const c_void>,
    _pool: Pool,
}

impl Drop for InitrdGuard {
    fn drop(&mut self) {
        let bs = self.fw.bs();
        // SAFETY: uninstalls exactly the interfaces installed on our handle.
        unsafe {
            if let Some(l) = self.loader.take() {
                (bs.uninstall_protocol_interface)(self.handle, &LOAD_FILE2_GUID, l);
            }
            if let Some(p) = self.path.take() {
                (bs.uninstall_protocol_interface)(self.handle, &DEVICE_PATH_GUID, p);
            }
        }
    }
}
