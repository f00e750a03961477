//! Reading a Unified Kernel Image: its sections, which of them the stub measures, and which
//! stub it carries.
//!
//! Multi-profile UKIs (UAPI UKI specification, "Multi-Profile UKIs"): sections before the first
//! `.profile` form the base; each `.profile` section starts a profile whose sections override
//! the base's when that profile is booted. The stub measures the merged set.

use std::borrow::Cow;

use crate::pcr11::StubSemantics;
use crate::pe::PeFile;
use crate::predict::MeasuredSection;
use crate::{Error, ParseError};

/// What identifies the stub a UKI was built from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StubIdentity {
    /// The `.sdmagic` text, e.g. `#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####`.
    pub sdmagic: Option<String>,
    /// Stub name and version from `.sdmagic`, e.g. (`systemd-stub`, `252.39-1~deb12u2`).
    pub name: Option<String>,
    pub version: Option<String>,
    /// The first `systemd-stub`/`imgctl-stub` component line of `.sbat`, if any.
    pub sbat_component: Option<String>,
}

impl StubIdentity {
    /// The systemd major version, when the stub is systemd-stub.
    pub fn systemd_major(&self) -> Option<u32> {
        if self.name.as_deref() != Some("systemd-stub") {
            return None;
        }
        let v = self.version.as_deref()?;
        let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    /// The measurement semantics this stub follows: for systemd-stub the row of its version
    /// ([`StubSemantics::for_systemd_version`]), for our own stub the one it implements
    /// ([`StubSemantics::IMGCTL_STUB`]); for any other the newest row.
    pub fn semantics(&self) -> StubSemantics {
        match self.systemd_major() {
            Some(v) => StubSemantics::for_systemd_version(v),
            None if self.name.as_deref() == Some("imgctl-stub") => StubSemantics::IMGCTL_STUB,
            None => StubSemantics::LATEST,
        }
    }

    /// Parses `.sdmagic` and `.sbat` contents.
    pub fn from_sections(sdmagic: Option<&[u8]>, sbat: Option<&[u8]>) -> Self {
        let text = |b: &[u8]| {
            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
            String::from_utf8_lossy(&b[..end]).trim().to_owned()
        };
        let sdmagic = sdmagic.map(text);
        let (name, version) = sdmagic
            .as_deref()
            .and_then(|m| {
                let inner = m.trim_matches('#').trim();
                let rest = inner.strip_prefix("LoaderInfo:")?.trim();
                let mut it = rest.splitn(2, ' ');
                Some((
                    it.next()?.to_owned(),
                    it.next().map(|v| v.trim().to_owned()),
                ))
            })
            .map_or((None, None), |(n, v)| (Some(n), v));
        let sbat_component = sbat.map(text).and_then(|t| {
            t.lines()
                .find(|l| {
                    l.starts_with("systemd-stub,")
                        || l.starts_with("imgctl-stub,")
                        || l.starts_with("systemd,")
                })
                .map(str::to_owned)
        });
        StubIdentity {
            sdmagic,
            name,
            version,
            sbat_component,
        }
    }
}

/// A section name with the bytes the stub sees in memory.
pub type SectionData<'a> = (String, Cow<'a, [u8]>);

/// A parsed UKI.
#[derive(Debug, Clone)]
pub struct Uki<'a> {
    pub pe: PeFile<'a>,
}

impl<'a> Uki<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self, ParseError> {
        Ok(Uki {
            pe: PeFile::parse(data)?,
        })
    }

    pub fn identity(&self) -> StubIdentity {
        let get = |n: &str| self.pe.section(n).and_then(|s| self.pe.memory_data(s).ok());
        StubIdentity::from_sections(get(".sdmagic").as_deref(), get(".sbat").as_deref())
    }

    /// Number of `.profile` sections (0 for a single-profile UKI).
    pub fn profile_count(&self) -> usize {
        self.pe
            .sections
            .iter()
            .filter(|s| s.name == ".profile")
            .count()
    }

    /// The sections the stub sees when booting `profile` (0 when the UKI has no profiles):
    /// the base sections, overridden by the selected profile's. Each with its in-memory bytes.
    pub fn sections_for_profile(&self, profile: u32) -> Result<Vec<SectionData<'a>>, Error> {
        let names: Vec<&str> = self.pe.sections.iter().map(|s| s.name.as_str()).collect();
        profile_sections(&names, profile)?
            .into_iter()
            .map(|i| {
                let s = &self.pe.sections[i];
                Ok((s.name.clone(), self.pe.memory_data(s)?))
            })
            .collect()
    }
}

/// Which `.dtbauto` a machine makes the stub select (systemd 257+, `src/boot/pe.c`): the
/// first `.dtbauto`, in section table order, whose devicetree's root `compatible` (its first
/// string) equals the machine's: the firmware devicetree's, or the one the UKI's `.hwids`
/// entry for the machine names. A `.dtbauto` the stub cannot read is never selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DtbChoice {
    /// No `.dtbauto` matches (e.g. an x86 machine without a devicetree): none is measured.
    None,
    /// The machine's devicetree compatible.
    Compatible(String),
}

/// A `.dtbauto` section the stub could select.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DtbCandidate {
    /// Which `.dtbauto` it is (0 = the first in the section table).
    pub index: usize,
    /// Its root compatible.
    pub compatible: String,
}

/// The `.dtbauto` sections among `sections` that some machine selects: readable, with a root
/// compatible, and the first of that compatible (a later one with the same is never chosen).
/// The second list names the ones never selected, and why.
pub fn dtbauto_candidates(
    sections: &[SectionData<'_>],
) -> (Vec<DtbCandidate>, Vec<(usize, String)>) {
    dtbauto_candidates_of(sections.iter().map(|(n, d)| (n.as_str(), d.as_ref())))
}

/// [`dtbauto_candidates`] over `(name, content)` pairs in section-table order (the content
/// of sections other than `.dtbauto` is not looked at).
pub fn dtbauto_candidates_of<'b>(
    sections: impl Iterator<Item = (&'b str, &'b [u8])>,
) -> (Vec<DtbCandidate>, Vec<(usize, String)>) {
    let mut out: Vec<DtbCandidate> = Vec::new();
    let mut never = Vec::new();
    for (index, (_, data)) in sections.filter(|(n, _)| *n == ".dtbauto").enumerate() {
        match crate::dtb::root_compatible(data) {
            Ok(Some(c)) if out.iter().any(|o| o.compatible == c) => {
                never.push((index, format!("an earlier .dtbauto is also {c:?}")))
            }
            Ok(Some(compatible)) => out.push(DtbCandidate { index, compatible }),
            Ok(None) => never.push((index, "its root node has no compatible".into())),
            Err(e) => never.push((index, format!("not a readable devicetree: {e}"))),
        }
    }
    (out, never)
}

/// `sections` as the stub sees them on a machine that makes `choice`: every `.dtbauto` but the
/// selected one removed.
pub fn select_dtbauto<'a>(
    sections: &[SectionData<'a>],
    choice: &DtbChoice,
) -> Vec<SectionData<'a>> {
    let kept = kept_for_dtb_choice(
        sections.iter().map(|(n, d)| (n.as_str(), d.as_ref())),
        choice,
    );
    sections
        .iter()
        .zip(kept)
        .filter(|(_, k)| *k)
        .map(|(s, _)| s.clone())
        .collect()
}

/// [`select_dtbauto`] over `(name, content)` pairs in section-table order: whether each section
/// stays (every one but the `.dtbauto` sections not selected).
pub fn kept_for_dtb_choice<'b>(
    sections: impl Iterator<Item = (&'b str, &'b [u8])> + Clone,
    choice: &DtbChoice,
) -> Vec<bool> {
    let chosen = match choice {
        DtbChoice::None => None,
        DtbChoice::Compatible(c) => dtbauto_candidates_of(sections.clone())
            .0
            .into_iter()
            .find(|d| d.compatible == *c)
            .map(|d| d.index),
    };
    let mut nth = 0;
    sections
        .map(|(n, _)| {
            if n != ".dtbauto" {
                return true;
            }
            nth += 1;
            Some(nth - 1) == chosen
        })
        .collect()
}

/// Which of a UKI's sections (given by name, in section-table order) the stub sees when booting
/// `profile`, as indices in the order [`Uki::sections_for_profile`] returns them: the sections
/// before the first `.profile`, each overridden by a section of the same name in the selected
/// profile (a `.profile` section and those after it, up to the next `.profile`).
pub fn profile_sections(names: &[&str], profile: u32) -> Result<Vec<usize>, Error> {
    let mut base: Vec<usize> = Vec::new();
    let mut profiles: Vec<Vec<usize>> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if *name == ".profile" {
            profiles.push(Vec::new());
        }
        match profiles.last_mut() {
            Some(p) => p.push(i),
            None => base.push(i),
        }
    }
    if profiles.is_empty() {
        if profile != 0 {
            return Err(Error::InvalidInput(format!(
                "profile {profile} requested but the UKI has no .profile sections"
            )));
        }
        return Ok(base);
    }
    let count = profiles.len();
    let Some(selected) = profiles.into_iter().nth(profile as usize) else {
        return Err(Error::InvalidInput(format!(
            "profile {profile} requested but the UKI has only {count} profiles"
        )));
    };
    for i in selected {
        base.retain(|&b| names[b] != names[i]);
        base.push(i);
    }
    Ok(base)
}

/// Borrows owned section contents as [`MeasuredSection`]s.
pub fn as_measured<'s>(sections: &'s [SectionData<'_>]) -> Vec<MeasuredSection<'s>> {
    sections
        .iter()
        .map(|(n, d)| MeasuredSection {
            name: n.as_str(),
            data: d.as_ref(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_selects_the_first_dtbauto_of_the_machines_compatible() {
        let d = |c: &[u8]| crate::dtb::tests::dtb(&[("compatible", c)]);
        let sections: Vec<SectionData<'_>> = vec![
            (".linux".into(), Cow::Owned(vec![1])),
            (".dtbauto".into(), Cow::Owned(d(b"vendor,a\0soc\0"))),
            (".dtbauto".into(), Cow::Owned(vec![0; 8])),
            (".dtbauto".into(), Cow::Owned(d(b"vendor,b\0"))),
            (".dtbauto".into(), Cow::Owned(d(b"vendor,a\0"))),
        ];
        let (cands, never) = dtbauto_candidates(&sections);
        let names: Vec<(usize, &str)> = cands
            .iter()
            .map(|c| (c.index, c.compatible.as_str()))
            .collect();
        assert_eq!(names, [(0, "vendor,a"), (2, "vendor,b")]);
        assert_eq!(never.iter().map(|n| n.0).collect::<Vec<_>>(), [1, 3]);
        let pick = |c: DtbChoice| {
            select_dtbauto(&sections, &c)
                .into_iter()
                .map(|(_, d)| d.into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(pick(DtbChoice::None), [vec![1]]);
        assert_eq!(
            pick(DtbChoice::Compatible("vendor,b".into())),
            [vec![1], d(b"vendor,b\0")]
        );
        // Only the first string of the root compatible counts.
        assert_eq!(pick(DtbChoice::Compatible("soc".into())), [vec![1]]);
    }

    #[test]
    fn identity_of_debian_systemd_stub() {
        let id = StubIdentity::from_sections(
            Some(b"#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####\0"),
            Some(b"sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\nsystemd,1,The systemd Developers,systemd,252,https://systemd.io/\n"),
        );
        assert_eq!(id.name.as_deref(), Some("systemd-stub"));
        assert_eq!(id.version.as_deref(), Some("252.39-1~deb12u2"));
        assert_eq!(id.systemd_major(), Some(252));
        assert_eq!(id.semantics(), StubSemantics::Systemd252);
        assert!(id.sbat_component.unwrap().starts_with("systemd,1,"));
        assert_eq!(StubIdentity::default().semantics(), StubSemantics::LATEST);
        let debian13 = StubIdentity::from_sections(
            Some(b"#### LoaderInfo: systemd-stub 257.13-1~deb13u1 ####\0"),
            None,
        );
        assert_eq!(debian13.semantics(), StubSemantics::Systemd257);
    }
}
