//! PKCS#11 URIs (RFC 7512), parsed: pure, no I/O.
//!
//! `pkcs11:token=Example%20CA;object=db;id=%01?pin-source=file:/run/pin&module-path=/usr/lib/x.so`
//!
//! Path attributes (`;`-separated) select the key: `token`, `manufacturer`, `serial`, `model`
//! (of the token), `slot-id`, `object` (the key's label), `id` (its `CKA_ID`, bytes), `type`
//! (only `private`). Query attributes (`&`-separated) say how to reach it: `pin-value`,
//! `pin-source` (a file whose first line is the PIN, `file:` URI or path) and `module-path`.
//! These three are also taken in the path, as several tools write them there. Values are
//! percent-decoded. Any other attribute (`module-name`, `library-*`, `slot-description`, a
//! vendor's `x-…`), a repeated one, or a URI naming neither `object` nor `id` is an error:
//! a URI that is not fully understood could select another key.

/// What went wrong reading a PKCS#11 URI.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UriError {
    #[error("not a PKCS#11 URI (it does not start with `pkcs11:`)")]
    Scheme,
    #[error("attribute {0:?} is not name=value")]
    NoValue(String),
    #[error("attribute {0:?} is given twice")]
    Repeated(String),
    #[error("attribute {0:?} is not one imgctl understands (token, manufacturer, serial, model, slot-id, object, id, type, pin-value, pin-source, module-path)")]
    Unknown(String),
    #[error("bad percent-encoding in {0:?}")]
    Percent(String),
    #[error("the value of {0:?} is not UTF-8")]
    Utf8(String),
    #[error("type={0} is not a private key (only type=private selects a signing key)")]
    Type(String),
    #[error("slot-id={0:?} is not a decimal number")]
    SlotId(String),
    #[error("the URI names no key: give object= (its label) or id=")]
    NoObject,
    #[error("both pin-value and pin-source are given")]
    TwoPins,
}

/// A parsed PKCS#11 URI that selects one private key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    pub token: Option<String>,
    pub manufacturer: Option<String>,
    pub serial: Option<String>,
    pub model: Option<String>,
    pub slot_id: Option<u64>,
    pub object: Option<String>,
    pub id: Option<Vec<u8>>,
    pub pin_value: Option<String>,
    pub pin_source: Option<String>,
    pub module_path: Option<String>,
}

impl std::fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Whether `s` is meant as a PKCS#11 URI (rather than a key file's path).
pub fn is_pkcs11_uri(s: &str) -> bool {
    s.get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("pkcs11:"))
}

fn percent_decode(raw: &str) -> Result<Vec<u8>, UriError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| UriError::Percent(raw.to_owned()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(out)
}

fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~:[]@!$'()*+,=/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Pkcs11Uri {
    /// Parses `text` (see the module doc).
    pub fn parse(text: &str) -> Result<Self, UriError> {
        if !is_pkcs11_uri(text) {
            return Err(UriError::Scheme);
        }
        let rest = &text[7..];
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut uri = Pkcs11Uri::default();
        let attrs = path
            .split(';')
            .chain(query.into_iter().flat_map(|q| q.split('&')))
            .filter(|a| !a.is_empty());
        for attr in attrs {
            let (name, raw) = attr
                .split_once('=')
                .ok_or_else(|| UriError::NoValue(attr.to_owned()))?;
            let bytes = percent_decode(raw)?;
            if !uri.apply(name, bytes)? {
                return Err(UriError::Repeated(name.to_owned()));
            }
        }
        if uri.object.is_none() && uri.id.is_none() {
            return Err(UriError::NoObject);
        }
        if uri.pin_value.is_some() && uri.pin_source.is_some() {
            return Err(UriError::TwoPins);
        }
        Ok(uri)
    }

    /// Sets attribute `name`; false when it was already set.
    fn apply(&mut self, name: &str, bytes: Vec<u8>) -> Result<bool, UriError> {
        let text = |b: Vec<u8>| String::from_utf8(b).map_err(|_| UriError::Utf8(name.to_owned()));
        Ok(match name {
            "token" => set(&mut self.token, text(bytes)?),
            "manufacturer" => set(&mut self.manufacturer, text(bytes)?),
            "serial" => set(&mut self.serial, text(bytes)?),
            "model" => set(&mut self.model, text(bytes)?),
            "object" => set(&mut self.object, text(bytes)?),
            "id" => set(&mut self.id, bytes),
            "pin-value" => set(&mut self.pin_value, text(bytes)?),
            "pin-source" => set(&mut self.pin_source, text(bytes)?),
            "module-path" => set(&mut self.module_path, text(bytes)?),
            "slot-id" => {
                let t = text(bytes)?;
                let n = t.parse::<u64>().map_err(|_| UriError::SlotId(t.clone()))?;
                set(&mut self.slot_id, n)
            }
            "type" => {
                let t = text(bytes)?;
                if t != "private" {
                    return Err(UriError::Type(t));
                }
                true
            }
            other => return Err(UriError::Unknown(other.to_owned())),
        })
    }

    /// The URI as it names the key, without its PIN (for messages).
    pub fn redacted(&self) -> String {
        let mut parts = Vec::new();
        let mut push = |name: &str, v: Option<&[u8]>| {
            if let Some(v) = v {
                parts.push(format!("{name}={}", percent_encode(v)));
            }
        };
        push("token", self.token.as_deref().map(str::as_bytes));
        push(
            "manufacturer",
            self.manufacturer.as_deref().map(str::as_bytes),
        );
        push("serial", self.serial.as_deref().map(str::as_bytes));
        push("model", self.model.as_deref().map(str::as_bytes));
        let slot = self.slot_id.map(|s| s.to_string());
        push("slot-id", slot.as_deref().map(str::as_bytes));
        push("object", self.object.as_deref().map(str::as_bytes));
        push("id", self.id.as_deref());
        format!("pkcs11:{}", parts.join(";"))
    }
}

fn set<T>(slot: &mut Option<T>, value: T) -> bool {
    if slot.is_some() {
        return false;
    }
    *slot = Some(value);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7512_examples() {
        // RFC 7512 section 7 examples (those that select one private key).
        let u = Pkcs11Uri::parse(
            "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=private?pin-source=file:/etc/token",
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("The Software PKCS#11 Softtoken"));
        assert_eq!(u.manufacturer.as_deref(), Some("Snake Oil, Inc."));
        assert_eq!(u.model.as_deref(), Some("1.0"));
        assert_eq!(u.object.as_deref(), Some("my-certificate"));
        assert_eq!(u.pin_source.as_deref(), Some("file:/etc/token"));
        let u = Pkcs11Uri::parse("pkcs11:object=my-sign-key;type=private?module-name=mypkcs11");
        assert_eq!(u, Err(UriError::Unknown("module-name".into())));
        let u =
            Pkcs11Uri::parse("pkcs11:id=%14%22;object=a?pin-value=1234&module-path=/usr/lib/x.so")
                .unwrap();
        assert_eq!(u.id.as_deref(), Some(&[0x14, 0x22][..]));
        assert_eq!(u.pin_value.as_deref(), Some("1234"));
        assert_eq!(u.module_path.as_deref(), Some("/usr/lib/x.so"));
        assert_eq!(u.redacted(), "pkcs11:object=a;id=%14%22");
        assert!(!format!("{u:?}").contains("1234"));
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for (uri, e) in [
            ("file:/x", UriError::Scheme),
            ("pkcs11:token=a", UriError::NoObject),
            (
                "pkcs11:object=a;object=b",
                UriError::Repeated("object".into()),
            ),
            ("pkcs11:object=a;type=cert", UriError::Type("cert".into())),
            (
                "pkcs11:object=a;x-vendor=1",
                UriError::Unknown("x-vendor".into()),
            ),
            ("pkcs11:object=%4", UriError::Percent("%4".into())),
            ("pkcs11:object", UriError::NoValue("object".into())),
            ("pkcs11:object=a;slot-id=x", UriError::SlotId("x".into())),
            (
                "pkcs11:object=a?pin-value=1&pin-source=/p",
                UriError::TwoPins,
            ),
            ("pkcs11:object=%ff", UriError::Utf8("object".into())),
        ] {
            assert_eq!(Pkcs11Uri::parse(uri), Err(e), "{uri}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn never_panics(s in "pkcs11:[a-z=;%?&0-9A-F-]{0,60}") {
            let _ = Pkcs11Uri::parse(&s);
        }
    }
}
