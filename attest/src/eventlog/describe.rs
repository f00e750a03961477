//! Human-readable descriptions of event data, for the common event types (PFP §10.4, §10.2.x
//! structures; systemd's EV_IPL/EV_EVENT_TAG from ../shared/reference/systemd.md §1.2–1.3).
//!
//! Decoding here never fails: data that does not have the expected structure is shown as
//! text or hex, so that a hostile log can always be listed.

use crate::eventlog::tcg::{Event, SPEC_ID_SIGNATURE, STARTUP_LOCALITY_SIGNATURE};
use crate::eventlog::types::EventType;
use imgctl_measure::reader::Reader;

/// Most bytes shown as hex for undecodable data.
const HEX_LIMIT: usize = 32;

/// Decodes UTF-16LE up to the first NUL; `None` unless the length is even and every unit
/// decodes.
pub fn utf16_string(data: &[u8]) -> Option<String> {
    if data.len() % 2 != 0 || data.is_empty() {
        return None;
    }
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    let s = String::from_utf16(&units).ok()?;
    s.chars().all(|c| !c.is_control() || c == '\t').then_some(s)
}

/// Printable ASCII (NULs at the end trimmed), if the whole data is.
pub fn ascii_string(data: &[u8]) -> Option<String> {
    let end = data.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    let text = &data[..end];
    (!text.is_empty()
        && text
            .iter()
            .all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\t' || *b == b'\n'))
    .then(|| String::from_utf8_lossy(text).into_owned())
}

/// A UTF-16 string if the data looks like one (every high byte of ASCII-range text is 0),
/// else ASCII.
pub fn text(data: &[u8]) -> Option<String> {
    if data.len() >= 2 && data.get(1) == Some(&0) {
        // Some firmware logs UTF-16 with a single trailing NUL byte (odd length).
        let even = &data[..data.len() & !1];
        if let Some(s) = utf16_string(even) {
            return Some(s);
        }
    }
    ascii_string(data)
}

fn hex_preview(data: &[u8]) -> String {
    if data.len() <= HEX_LIMIT {
        hex::encode(data)
    } else {
        format!(
            "{}… ({} bytes)",
            hex::encode(&data[..HEX_LIMIT]),
            data.len()
        )
    }
}

/// An EFI_GUID in its canonical text form (first three fields little-endian).
pub fn guid(b: &[u8; 16]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        hex::encode(&b[10..16])
    )
}

/// `EFI_TCG2_TAGGED_EVENT` / `TCG_PCClientTaggedEvent`: `u32 EventId | u32 EventSize |
/// Event[EventSize]`.
pub fn tagged_event(data: &[u8]) -> Option<(u32, &[u8])> {
    let mut r = Reader::new(data);
    let id = r.u32_le("EventId").ok()?;
    let size = r.u32_le("EventSize").ok()?;
    let body = r.take(size as usize, "Event").ok()?;
    r.expect_end("tagged event").ok()?;
    Some((id, body))
}

/// `UEFI_VARIABLE_DATA`: the variable's GUID, name and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UefiVariable<'a> {
    pub guid: [u8; 16],
    pub name: String,
    pub data: &'a [u8],
}

pub fn uefi_variable(data: &[u8]) -> Option<UefiVariable<'_>> {
    let mut r = Reader::new(data);
    let guid = r.array::<16>("VariableName").ok()?;
    let name_len = usize::try_from(r.u64_le("UnicodeNameLength").ok()?).ok()?;
    let data_len = usize::try_from(r.u64_le("VariableDataLength").ok()?).ok()?;
    let name = r.take(name_len.checked_mul(2)?, "UnicodeName").ok()?;
    let data = r.take(data_len, "VariableData").ok()?;
    let name = utf16_string(name).unwrap_or_default();
    Some(UefiVariable { guid, name, data })
}

/// `UEFI_IMAGE_LOAD_EVENT` summary: location, length and the decoded device path.
fn image_load(data: &[u8]) -> Option<String> {
    let mut r = Reader::new(data);
    let location = r.u64_le("ImageLocationInMemory").ok()?;
    let length = r.u64_le("ImageLengthInMemory").ok()?;
    let _link = r.u64_le("ImageLinkTimeAddress").ok()?;
    let dp_len = usize::try_from(r.u64_le("LengthOfDevicePath").ok()?).ok()?;
    let dp = r.take(dp_len, "DevicePath").ok()?;
    Some(format!(
        "image at {location:#x}, {length} bytes, path {}",
        device_path(dp)
    ))
}

/// A compact rendering of an EFI device path (UEFI spec §10.3): file paths, hard-drive
/// partitions and PCI nodes by name, other nodes by type/subtype.
pub fn device_path(dp: &[u8]) -> String {
    let mut r = Reader::new(dp);
    let mut parts = Vec::new();
    while let (Ok(t), Ok(st), Ok(len)) = (r.u8("Type"), r.u8("SubType"), r.u16_le("Length")) {
        let Some(body) = usize::from(len)
            .checked_sub(4)
            .and_then(|n| r.take(n, "node").ok())
        else {
            parts.push("<malformed>".to_owned());
            break;
        };
        match (t, st) {
            (0x7f, 0xff) => break,
            (0x7f, _) => parts.push("|".to_owned()),
            (0x04, 0x04) => parts.push(utf16_string(body).unwrap_or_else(|| "File(?)".into())),
            (0x04, 0x01) => {
                let part = body
                    .get(..4)
                    .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                parts.push(format!("HD({part})"));
            }
            (0x04, 0x06) | (0x04, 0x07) => {
                let name = if st == 6 { "FvFile" } else { "Fv" };
                match <[u8; 16]>::try_from(body) {
                    Ok(g) => parts.push(format!("{name}({})", guid(&g))),
                    Err(_) => parts.push(format!("{name}(?)")),
                }
            }
            (0x01, 0x01) if body.len() == 2 => {
                parts.push(format!("Pci({:#x},{:#x})", body[1], body[0]))
            }
            (0x02, 0x01) => parts.push("PciRoot".to_owned()),
            _ => parts.push(format!("DP({t:#x},{st:#x})")),
        }
    }
    if parts.is_empty() {
        "(empty)".to_owned()
    } else {
        parts.join("/")
    }
}

/// A one-line description of the event's data.
pub fn describe(event: &Event) -> String {
    let d = event.data.as_slice();
    let t = event.event_type;
    let described = match t {
        EventType::EV_NO_ACTION => no_action(d),
        EventType::EV_SEPARATOR => Some(match d {
            [0, 0, 0, 0] => "separator (success)".to_owned(),
            [0xff, 0xff, 0xff, 0xff] => "separator (error)".to_owned(),
            _ => format!("separator with unusual data {}", hex_preview(d)),
        }),
        EventType::EV_EVENT_TAG => tagged_event(d).map(|(id, body)| {
            format!(
                "tag {id:#010x}: {}",
                text(body).unwrap_or_else(|| hex_preview(body))
            )
        }),
        EventType::EV_EFI_BOOT_SERVICES_APPLICATION
        | EventType::EV_EFI_BOOT_SERVICES_DRIVER
        | EventType::EV_EFI_RUNTIME_SERVICES_DRIVER => image_load(d),
        t if t.is_efi_variable() => uefi_variable(d).map(|v| {
            let value = match (v.name.as_str(), v.data) {
                ("SecureBoot", [b]) => format!(" = {b}"),
                ("BootOrder", bytes) if bytes.len() % 2 == 0 => format!(
                    " = {}",
                    bytes
                        .chunks_exact(2)
                        .map(|c| format!("Boot{:04X}", u16::from_le_bytes([c[0], c[1]])))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                _ => format!(" ({} bytes)", v.data.len()),
            };
            format!("{} {}{value}", guid(&v.guid), v.name)
        }),
        EventType::EV_EFI_PLATFORM_FIRMWARE_BLOB => blob(d),
        EventType::EV_EFI_PLATFORM_FIRMWARE_BLOB2 => blob2(d),
        EventType::EV_EFI_HANDOFF_TABLES => Reader::new(d)
            .u64_le("NumberOfTables")
            .ok()
            .map(|n| format!("{n} configuration table(s)")),
        EventType::EV_EFI_GPT_EVENT => Reader::new(d)
            .skip(92, "UEFIPartitionHeader")
            .ok()
            .and_then(|_| {
                let mut r = Reader::new(d.get(92..)?);
                r.u64_le("NumberOfPartitions").ok()
            })
            .map(|n| format!("GPT with {n} partition(s)")),
        EventType::EV_POST_CODE if d.len() == 16 && ascii_string(d).is_none() => blob(d),
        _ => None,
    };
    described.or_else(|| text(d)).unwrap_or_else(|| {
        if d.is_empty() {
            String::new()
        } else {
            hex_preview(d)
        }
    })
}

fn blob(d: &[u8]) -> Option<String> {
    let mut r = Reader::new(d);
    let base = r.u64_le("BlobBase").ok()?;
    let len = r.u64_le("BlobLength").ok()?;
    Some(format!("blob at {base:#x}, {len} bytes"))
}

fn blob2(d: &[u8]) -> Option<String> {
    let (n, rest) = d.split_first()?;
    let desc = rest.get(..usize::from(*n))?;
    Some(format!(
        "{} {}",
        text(desc).unwrap_or_else(|| hex_preview(desc)),
        blob(rest.get(usize::from(*n)..)?)?
    ))
}

fn no_action(d: &[u8]) -> Option<String> {
    if d.starts_with(SPEC_ID_SIGNATURE) {
        return Some("Spec ID Event03".to_owned());
    }
    if d.len() == 17 && d.starts_with(STARTUP_LOCALITY_SIGNATURE) {
        return Some(format!("StartupLocality {}", d[16]));
    }
    if d.starts_with(b"SP800-155 Event3\0") || d.starts_with(b"SP800-155 Event\0") {
        return Some("SP800-155 reference manifest event".to_owned());
    }
    let sig = d.get(..16)?;
    ascii_string(sig).map(|s| format!("{s} ({} bytes)", d.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_is_mixed_endian() {
        // EFI_GLOBAL_VARIABLE 8be4df61-93ca-11d2-aa0d-00e098032b8c as stored in logs.
        let b = [
            0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03,
            0x2b, 0x8c,
        ];
        assert_eq!(guid(&b), "8be4df61-93ca-11d2-aa0d-00e098032b8c");
    }

    #[test]
    fn utf16_with_nul_decodes() {
        let data: Vec<u8> = ".linux\0"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(utf16_string(&data).as_deref(), Some(".linux"));
        assert_eq!(text(&data).as_deref(), Some(".linux"));
        assert_eq!(text(b"grub_cmd: ls\0").as_deref(), Some("grub_cmd: ls"));
    }
}
