//! PCR 7 (Secure Boot policy) as OVMF measures it, from the firmware's variable store. Pure.
//!
//! The variable store: an EDK2 raw varstore (`OVMF_VARS*.fd`), as `virt-fw-vars` writes it:
//! `EFI_FIRMWARE_VOLUME_HEADER` (signature `_FVH` at offset 40, `HeaderLength` u16 at 48), then
//! `VARIABLE_STORE_HEADER { EFI_GUID Signature (gEfiAuthenticatedVariableGuid); u32 Size;
//! u8 Format (0x5a); u8 State (0xfe); u16; u32 }`, then 4-byte-aligned
//! `AUTHENTICATED_VARIABLE_HEADER { u16 StartId (0x55aa); u8 State; u8; u32 Attributes;
//! u64 MonotonicCount; EFI_TIME (16); u32 PubKeyIndex; u32 NameSize; u32 DataSize;
//! EFI_GUID VendorGuid }` + name (UTF-16LE with NUL) + data. A variable counts when its
//! State is `VAR_ADDED` (0x3f) or `VAR_ADDED & VAR_IN_DELETED_TRANSITION` (0x3e), as EDK2's
//! variable driver decides.
//!
//! The events, per TCG PC Client PFP §10.4.4 and as a captured OVMF (edk2, Debian bookworm)
//! boot with our keys enrolled logs them (tests/secure_boot.rs): five
//! `EV_EFI_VARIABLE_DRIVER_CONFIG` (SecureBoot, PK, KEK, db, dbx, each a `UEFI_VARIABLE_DATA
//! { EFI_GUID VariableName; u64 UnicodeNameLength (chars, no NUL); u64 VariableDataLength;
//! CHAR16 UnicodeName[]; u8 VariableData[] }`, digest = hash of that structure), the
//! `EV_SEPARATOR` (4 zero bytes), then one `EV_EFI_VARIABLE_AUTHORITY` for the db entry that
//! verified the boot application (`UEFI_VARIABLE_DATA` of "db" whose data is that entry's
//! `EFI_SIGNATURE_DATA`: owner GUID + certificate).

use crate::bank::{Digest, HashAlg, Pcr};
use crate::reader::Reader;
use crate::ParseError;

/// `EFI_GLOBAL_VARIABLE` (SecureBoot, PK, KEK), as stored (mixed-endian).
pub const EFI_GLOBAL_VARIABLE: [u8; 16] = guid_le(
    0x8be4df61,
    0x93ca,
    0x11d2,
    [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c],
);
/// `EFI_IMAGE_SECURITY_DATABASE_GUID` (db, dbx).
pub const EFI_IMAGE_SECURITY_DATABASE: [u8; 16] = guid_le(
    0xd719b2cb,
    0x3d3a,
    0x4596,
    [0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f],
);
/// `EFI_CERT_X509_GUID`: an `EFI_SIGNATURE_LIST` of DER certificates.
pub const EFI_CERT_X509: [u8; 16] = guid_le(
    0xa5c059a1,
    0x94e4,
    0x4aa7,
    [0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72],
);
/// `gEfiAuthenticatedVariableGuid`: the variable store header of authenticated variables.
pub const EFI_AUTHENTICATED_VARIABLE: [u8; 16] = guid_le(
    0xaaf32c78,
    0x947b,
    0x439a,
    [0xa1, 0x80, 0x2e, 0x14, 0x4e, 0xc3, 0x77, 0x92],
);
/// `gEfiSecureBootEnableDisableGuid` (EDK2's SecureBootEnable).
pub const SECURE_BOOT_ENABLE_DISABLE: [u8; 16] = guid_le(
    0xf0a30bc7,
    0xaf08,
    0x4556,
    [0x99, 0xc4, 0x00, 0x10, 0x09, 0xc9, 0x3a, 0x44],
);

const fn guid_le(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// The most variables a store may hold (an OVMF store holds a few dozen).
const MAX_VARIABLES: usize = 4096;

/// One live variable of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub vendor: [u8; 16],
    pub name: String,
    pub attributes: u32,
    pub data: Vec<u8>,
}

/// The live variables of an EDK2 raw variable store, in store order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarStore {
    pub variables: Vec<Variable>,
}

impl VarStore {
    /// Parses an EDK2 raw varstore (see the module doc); anything else is an error.
    pub fn parse(data: &[u8]) -> Result<VarStore, ParseError> {
        let mut r = Reader::new(data);
        r.skip(40, "EFI_FIRMWARE_VOLUME_HEADER")?;
        if &r.array::<4>("Signature")? != b"_FVH" {
            return Err(ParseError::new(
                40,
                "Signature",
                "not a firmware volume (no _FVH): not an EDK2 raw variable store",
            ));
        }
        r.skip(4, "Attributes")?;
        let header_len = usize::from(r.u16_le("HeaderLength")?);
        let mut r = Reader::new(data);
        r.skip(header_len, "firmware volume header")?;
        let store_at = r.offset();
        let signature = r.array::<16>("VARIABLE_STORE_HEADER Signature")?;
        if signature != EFI_AUTHENTICATED_VARIABLE {
            return Err(ParseError::new(
                store_at,
                "VARIABLE_STORE_HEADER Signature",
                "not gEfiAuthenticatedVariableGuid: not an authenticated variable store",
            ));
        }
        let size = r.u32_le("VARIABLE_STORE_HEADER Size")? as usize;
        let format = r.u8("Format")?;
        if format != 0x5a {
            return Err(ParseError::new(
                r.offset() - 1,
                "Format",
                format!("{format:#x}, expected 0x5a (VARIABLE_STORE_FORMATTED)"),
            ));
        }
        r.skip(7, "VARIABLE_STORE_HEADER State and reserved")?;
        let body_len = size.checked_sub(28).ok_or_else(|| {
            ParseError::new(store_at + 16, "Size", "smaller than the store header")
        })?;
        let mut r = r.sub(body_len, "variable store")?;
        let mut variables = Vec::new();
        loop {
            // Headers are 4-byte aligned.
            let pad = (4 - r.offset() % 4) % 4;
            if r.remaining() < pad + 60 {
                break;
            }
            r.skip(pad, "alignment")?;
            let at = r.offset();
            if r.u16_le("StartId")? != 0x55aa {
                break;
            }
            let state = r.u8("State")?;
            r.skip(1, "Reserved")?;
            let attributes = r.u32_le("Attributes")?;
            r.skip(8 + 16 + 4, "MonotonicCount, TimeStamp, PubKeyIndex")?;
            let name_size = r.u32_le("NameSize")? as usize;
            let data_size = r.u32_le("DataSize")? as usize;
            let vendor = r.array::<16>("VendorGuid")?;
            let name = r.take(name_size, "Name")?;
            let data = r.take(data_size, "Data")?;
            if state != 0x3f && state != 0x3e {
                continue;
            }
            if variables.len() == MAX_VARIABLES {
                return Err(ParseError::new(
                    at,
                    "variable",
                    format!("more than {MAX_VARIABLES} variables"),
                ));
            }
            let name = utf16_name(name)
                .ok_or_else(|| ParseError::new(at + 60, "Name", "not NUL-terminated UTF-16"))?;
            variables.push(Variable {
                vendor,
                name,
                attributes,
                data: data.to_vec(),
            });
        }
        Ok(VarStore { variables })
    }

    /// The live variable `name` of `vendor` (the last one, should a store hold two).
    pub fn get(&self, vendor: &[u8; 16], name: &str) -> Option<&Variable> {
        self.variables
            .iter()
            .rev()
            .find(|v| &v.vendor == vendor && v.name == name)
    }

    /// Secure Boot is enforced: PK is enrolled (user mode) and EDK2's SecureBootEnable is 1.
    pub fn secure_boot(&self) -> bool {
        let pk = self
            .get(&EFI_GLOBAL_VARIABLE, "PK")
            .is_some_and(|v| !v.data.is_empty());
        let enabled = self
            .get(&SECURE_BOOT_ENABLE_DISABLE, "SecureBootEnable")
            .is_some_and(|v| v.data == [1]);
        pk && enabled
    }
}

fn utf16_name(b: &[u8]) -> Option<String> {
    if b.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = b
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let (last, name) = units.split_last()?;
    if *last != 0 {
        return None;
    }
    String::from_utf16(name).ok()
}

/// `UEFI_VARIABLE_DATA` for `vendor`:`name` holding `data`.
pub fn uefi_variable_data(vendor: &[u8; 16], name: &str, data: &[u8]) -> Vec<u8> {
    let units: Vec<u16> = name.encode_utf16().collect();
    let mut out = Vec::with_capacity(32 + units.len() * 2 + data.len());
    out.extend_from_slice(vendor);
    out.extend_from_slice(&(units.len() as u64).to_le_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    for u in units {
        out.extend_from_slice(&u.to_le_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// One `EFI_SIGNATURE_DATA` of a signature database: its list's type, owner and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureData<'a> {
    pub signature_type: [u8; 16],
    pub owner: [u8; 16],
    pub data: &'a [u8],
}

impl SignatureData<'_> {
    /// The `EFI_SIGNATURE_DATA` bytes: owner GUID, then the data.
    pub fn encode(&self) -> Vec<u8> {
        [&self.owner[..], self.data].concat()
    }
}

/// Every entry of a signature database (a sequence of `EFI_SIGNATURE_LIST { EFI_GUID
/// SignatureType; u32 SignatureListSize; u32 SignatureHeaderSize; u32 SignatureSize;
/// header; EFI_SIGNATURE_DATA[] }`, UEFI 2.10 §32.4.1).
pub fn signature_database(db: &[u8]) -> Result<Vec<SignatureData<'_>>, ParseError> {
    let mut r = Reader::new(db);
    let mut out = Vec::new();
    while !r.is_empty() {
        let at = r.offset();
        let signature_type = r.array::<16>("SignatureType")?;
        let list_size = r.u32_le("SignatureListSize")? as usize;
        let header_size = r.u32_le("SignatureHeaderSize")? as usize;
        let sig_size = r.u32_le("SignatureSize")? as usize;
        let body = list_size
            .checked_sub(28)
            .ok_or_else(|| ParseError::new(at, "SignatureListSize", "smaller than the header"))?;
        let mut list = r.sub(body, "EFI_SIGNATURE_LIST")?;
        list.skip(header_size, "SignatureHeader")?;
        if sig_size < 16 || list.remaining() % sig_size != 0 {
            return Err(ParseError::new(
                at,
                "SignatureSize",
                format!(
                    "{sig_size} does not divide the {} bytes of signatures",
                    list.remaining()
                ),
            ));
        }
        while !list.is_empty() {
            let owner = list.array::<16>("SignatureOwner")?;
            let data = list.take(sig_size - 16, "SignatureData")?;
            out.push(SignatureData {
                signature_type,
                owner,
                data,
            });
        }
    }
    Ok(out)
}

/// One predicted PCR 7 event: its type name, its data, its digests (in the banks asked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pcr7Event {
    pub kind: &'static str,
    pub data: Vec<u8>,
}

/// Why PCR 7 cannot be predicted.
#[derive(Debug, thiserror::Error)]
pub enum Pcr7Error {
    #[error("Secure Boot is not enabled in the variable store (no PK, or SecureBootEnable is not 1); PCR 7 then depends on what the firmware does without it, which is not modelled")]
    NotEnforced,
    #[error("Secure Boot is enforced by the variable store: the PCR 7 events name the db entry that vouches for the boot application")]
    Enforced,
    #[error("db: {0}")]
    Db(ParseError),
    #[error("no X.509 entry of db is the boot application's signer certificate or its issuer, so the firmware would refuse it (or trust it through a longer chain, which is not modelled)")]
    NoAuthority,
}

/// The PCR 7 events OVMF logs booting one application signed by `signer_der` (a DER
/// certificate) with `store`'s Secure Boot variables (see the module doc).
pub fn pcr7_events(store: &VarStore, signer_der: &[u8]) -> Result<Vec<Pcr7Event>, Pcr7Error> {
    pcr7_events_trusting(store, signer_der, &|_| false)
}

/// [`pcr7_events`] where a db certificate also vouches for the application when `issued`
/// says it issued the signer certificate (a CA in db, as EDK2's `IsAllowedByDb` accepts it with
/// `Pkcs7Verify` against each db certificate in order): the authority event is the first db
/// X.509 entry that is the signer or its issuer.
pub fn pcr7_events_trusting(
    store: &VarStore,
    signer_der: &[u8],
    issued: &dyn Fn(&[u8]) -> bool,
) -> Result<Vec<Pcr7Event>, Pcr7Error> {
    if !store.secure_boot() {
        return Err(Pcr7Error::NotEnforced);
    }
    let mut events = pcr7_config_events(store, 1);
    let db = signature_database(
        store
            .get(&EFI_IMAGE_SECURITY_DATABASE, "db")
            .map(|v| v.data.as_slice())
            .unwrap_or_default(),
    )
    .map_err(Pcr7Error::Db)?;
    let entry = db
        .iter()
        .find(|e| e.signature_type == EFI_CERT_X509 && (e.data == signer_der || issued(e.data)))
        .ok_or(Pcr7Error::NoAuthority)?;
    events.push(Pcr7Event {
        kind: "EV_EFI_VARIABLE_AUTHORITY",
        data: uefi_variable_data(&EFI_IMAGE_SECURITY_DATABASE, "db", &entry.encode()),
    });
    Ok(events)
}

/// The PCR 7 events EDK2 logs when `store` does not enforce Secure Boot: the `SecureBoot`
/// variable as 0, PK, KEK, db and dbx as the store holds them (empty on a fresh OVMF), the
/// separator, and no authority event (the firmware checks no signature, so any application
/// boots and none is named).
pub fn pcr7_events_without_secure_boot(store: &VarStore) -> Result<Vec<Pcr7Event>, Pcr7Error> {
    if store.secure_boot() {
        return Err(Pcr7Error::Enforced);
    }
    Ok(pcr7_config_events(store, 0))
}

/// The configuration events EDK2 logs in PCR 7 before any application: the `SecureBoot`
/// variable as `secure_boot`, PK, KEK, db and dbx as `store` holds them (empty when absent),
/// and the separator.
fn pcr7_config_events(store: &VarStore, secure_boot: u8) -> Vec<Pcr7Event> {
    let mut events = vec![Pcr7Event {
        kind: "EV_EFI_VARIABLE_DRIVER_CONFIG",
        data: uefi_variable_data(&EFI_GLOBAL_VARIABLE, "SecureBoot", &[secure_boot]),
    }];
    for (vendor, name) in [
        (&EFI_GLOBAL_VARIABLE, "PK"),
        (&EFI_GLOBAL_VARIABLE, "KEK"),
        (&EFI_IMAGE_SECURITY_DATABASE, "db"),
        (&EFI_IMAGE_SECURITY_DATABASE, "dbx"),
    ] {
        let data = store
            .get(vendor, name)
            .map(|v| v.data.as_slice())
            .unwrap_or_default();
        events.push(Pcr7Event {
            kind: "EV_EFI_VARIABLE_DRIVER_CONFIG",
            data: uefi_variable_data(vendor, name, data),
        });
    }
    events.push(Pcr7Event {
        kind: "EV_SEPARATOR",
        data: vec![0; 4],
    });
    events
}

/// PCR 7 in `bank` after `events` (each extended with the hash of its data).
pub fn replay_pcr7(events: &[Pcr7Event], bank: HashAlg) -> Result<Digest, crate::Error> {
    let mut pcr = Pcr::reset(bank).map_err(|e| crate::Error::InvalidInput(e.to_string()))?;
    for e in events {
        pcr.extend_data(&e.data);
    }
    Ok(pcr.value().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The SecureBoot event OVMF logged in the captured boot (tests/secure_boot.rs).
    #[test]
    fn secure_boot_variable_data_is_ovmfs() {
        assert_eq!(
            hex::encode(uefi_variable_data(&EFI_GLOBAL_VARIABLE, "SecureBoot", &[1])),
            "61dfe48bca93d211aa0d00e098032b8c0a000000000000000100000000000000\
             53006500630075007200650042006f006f007400\
             01"
        );
    }

    fn store(vars: &[(&[u8; 16], &str, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (vendor, name, data) in vars {
            while body.len() % 4 != 0 {
                body.push(0xff);
            }
            let name: Vec<u8> = name
                .encode_utf16()
                .chain([0])
                .flat_map(|u| u.to_le_bytes())
                .collect();
            body.extend_from_slice(&0x55aau16.to_le_bytes());
            body.push(0x3f);
            body.push(0);
            body.extend_from_slice(&7u32.to_le_bytes());
            body.extend_from_slice(&[0; 28]);
            body.extend_from_slice(&(name.len() as u32).to_le_bytes());
            body.extend_from_slice(&(data.len() as u32).to_le_bytes());
            body.extend_from_slice(*vendor);
            body.extend_from_slice(&name);
            body.extend_from_slice(data);
        }
        body.resize(body.len() + 64, 0xff);
        let mut fv = vec![0u8; 72];
        fv[40..44].copy_from_slice(b"_FVH");
        fv[48..50].copy_from_slice(&72u16.to_le_bytes());
        fv.extend_from_slice(&EFI_AUTHENTICATED_VARIABLE);
        fv.extend_from_slice(&((28 + body.len()) as u32).to_le_bytes());
        fv.extend_from_slice(&[0x5a, 0xfe, 0, 0, 0, 0, 0, 0]);
        fv.extend_from_slice(&body);
        fv
    }

    fn x509_list(owner: [u8; 16], cert: &[u8]) -> Vec<u8> {
        let mut l = EFI_CERT_X509.to_vec();
        l.extend_from_slice(&((28 + 16 + cert.len()) as u32).to_le_bytes());
        l.extend_from_slice(&0u32.to_le_bytes());
        l.extend_from_slice(&((16 + cert.len()) as u32).to_le_bytes());
        l.extend_from_slice(&owner);
        l.extend_from_slice(cert);
        l
    }

    #[test]
    fn a_store_with_our_keys_gives_the_seven_events() {
        let db = x509_list([9; 16], b"CERT");
        let raw = store(&[
            (&EFI_GLOBAL_VARIABLE, "PK", b"pk"),
            (&EFI_GLOBAL_VARIABLE, "KEK", b"kek"),
            (&EFI_IMAGE_SECURITY_DATABASE, "db", &db),
            (&SECURE_BOOT_ENABLE_DISABLE, "SecureBootEnable", &[1]),
        ]);
        let s = VarStore::parse(&raw).unwrap();
        assert_eq!(s.variables.len(), 4);
        let ev = pcr7_events(&s, b"CERT").unwrap();
        assert_eq!(ev.len(), 7);
        assert_eq!(
            ev[6].data,
            uefi_variable_data(
                &EFI_IMAGE_SECURITY_DATABASE,
                "db",
                &[&[9u8; 16][..], b"CERT"].concat()
            )
        );
        // dbx absent: measured with no data.
        assert_eq!(
            ev[4].data,
            uefi_variable_data(&EFI_IMAGE_SECURITY_DATABASE, "dbx", &[])
        );
        assert!(matches!(
            pcr7_events(&s, b"OTHER"),
            Err(Pcr7Error::NoAuthority)
        ));
        let off = VarStore::parse(&store(&[(&EFI_GLOBAL_VARIABLE, "PK", b"pk")])).unwrap();
        assert!(matches!(
            pcr7_events(&off, b"CERT"),
            Err(Pcr7Error::NotEnforced)
        ));
        // Not enforced: SecureBoot as 0, the databases as stored, the separator, no authority
        // (the OS boot test checks the value against the guest's TPM).
        let ev = pcr7_events_without_secure_boot(&off).unwrap();
        let kinds: Vec<&str> = ev.iter().map(|e| e.kind).collect();
        assert_eq!(kinds[..5], ["EV_EFI_VARIABLE_DRIVER_CONFIG"; 5]);
        assert_eq!(kinds[5..], ["EV_SEPARATOR"]);
        assert_eq!(
            ev[0].data,
            uefi_variable_data(&EFI_GLOBAL_VARIABLE, "SecureBoot", &[0])
        );
        assert_eq!(
            ev[1].data,
            uefi_variable_data(&EFI_GLOBAL_VARIABLE, "PK", b"pk")
        );
        assert!(matches!(
            pcr7_events_without_secure_boot(&s),
            Err(Pcr7Error::Enforced)
        ));
    }

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = VarStore::parse(&data);
            let _ = signature_database(&data);
        }

        #[test]
        fn stores_round_trip(vars in proptest::collection::vec(
            ("[A-Za-z]{1,12}", proptest::collection::vec(any::<u8>(), 0..64)), 0..8)) {
            let v: Vec<(&[u8; 16], &str, &[u8])> = vars
                .iter()
                .map(|(n, d)| (&EFI_GLOBAL_VARIABLE, n.as_str(), d.as_slice()))
                .collect();
            let s = VarStore::parse(&store(&v)).unwrap();
            prop_assert_eq!(s.variables.len(), vars.len());
            for (got, (n, d)) in s.variables.iter().zip(&vars) {
                prop_assert_eq!(&got.name, n);
                prop_assert_eq!(&got.data, d);
            }
        }
    }
}
