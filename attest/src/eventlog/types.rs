//! Event types of the TCG PC Client Platform Firmware Profile (PFP) §10.4.1, as an open set.
//!
//! Values from tpm2-tools `lib/efi_event.h` (../shared/reference/tlog-eventlog.md §B2). Unknown
//! values parse, round-trip and are shown as hex.

use std::fmt;

/// A TCG event type (`TCG_EVENTTYPE`, a `u32`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType(pub u32);

macro_rules! event_types {
    ($($name:ident = $value:expr),* $(,)?) => {
        impl EventType {
            $(pub const $name: EventType = EventType($value);)*

            /// The spec name (`EV_…`), if the value is known.
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $(Self::$name => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

event_types! {
    EV_PREBOOT_CERT = 0x0000_0000,
    EV_POST_CODE = 0x0000_0001,
    EV_UNUSED = 0x0000_0002,
    EV_NO_ACTION = 0x0000_0003,
    EV_SEPARATOR = 0x0000_0004,
    EV_ACTION = 0x0000_0005,
    EV_EVENT_TAG = 0x0000_0006,
    EV_S_CRTM_CONTENTS = 0x0000_0007,
    EV_S_CRTM_VERSION = 0x0000_0008,
    EV_CPU_MICROCODE = 0x0000_0009,
    EV_PLATFORM_CONFIG_FLAGS = 0x0000_000a,
    EV_TABLE_OF_DEVICES = 0x0000_000b,
    EV_COMPACT_HASH = 0x0000_000c,
    EV_IPL = 0x0000_000d,
    EV_IPL_PARTITION_DATA = 0x0000_000e,
    EV_NONHOST_CODE = 0x0000_000f,
    EV_NONHOST_CONFIG = 0x0000_0010,
    EV_NONHOST_INFO = 0x0000_0011,
    EV_OMIT_BOOT_DEVICE_EVENTS = 0x0000_0012,
    EV_EFI_VARIABLE_DRIVER_CONFIG = 0x8000_0001,
    EV_EFI_VARIABLE_BOOT = 0x8000_0002,
    EV_EFI_BOOT_SERVICES_APPLICATION = 0x8000_0003,
    EV_EFI_BOOT_SERVICES_DRIVER = 0x8000_0004,
    EV_EFI_RUNTIME_SERVICES_DRIVER = 0x8000_0005,
    EV_EFI_GPT_EVENT = 0x8000_0006,
    EV_EFI_ACTION = 0x8000_0007,
    EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x8000_0008,
    EV_EFI_HANDOFF_TABLES = 0x8000_0009,
    EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000_000a,
    EV_EFI_HANDOFF_TABLES2 = 0x8000_000b,
    EV_EFI_VARIABLE_BOOT2 = 0x8000_000c,
    EV_EFI_HCRTM_EVENT = 0x8000_0010,
    EV_EFI_VARIABLE_AUTHORITY = 0x8000_00e0,
}

impl EventType {
    /// Whether the event is one of the `EV_EFI_VARIABLE_*` kinds carrying `UEFI_VARIABLE_DATA`.
    pub fn is_efi_variable(self) -> bool {
        matches!(
            self,
            Self::EV_EFI_VARIABLE_DRIVER_CONFIG
                | Self::EV_EFI_VARIABLE_BOOT
                | Self::EV_EFI_VARIABLE_BOOT2
                | Self::EV_EFI_VARIABLE_AUTHORITY
        )
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "EV_0x{:08x}", self.0),
        }
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown_types_display() {
        assert_eq!(EventType(0x0d).to_string(), "EV_IPL");
        assert_eq!(
            EventType(0x8000_00e0).to_string(),
            "EV_EFI_VARIABLE_AUTHORITY"
        );
        assert_eq!(EventType(0x8000_00e1).to_string(), "EV_0x800000e1");
    }
}
