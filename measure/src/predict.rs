//! PCR 11 prediction: the values a TPM shows after systemd-stub has measured a UKI's sections
//! (the empty boot path) and after each systemd-pcrphase step.
//!
//! The output mirrors `systemd-measure calculate --json`: per bank, a list of
//! `{"phase": PATH, "pcr": 11, "hash": HEX}` (no `phase` for the empty path).

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;
use serde::Serialize;

use crate::bank::{Digest, HashAlg, Pcr};
use crate::pcr11::{name_bytes, StubSemantics, DEFAULT_PHASE_PATHS, PCR_KERNEL_IMAGE};
use crate::Error;

/// A boot phase path: the pcrphase words extended after the stub, e.g.
/// `enter-initrd:leave-initrd`. Empty words are dropped, as systemd-measure does, so `:` is the
/// empty path (right after the stub).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PhasePath(Vec<String>);

impl PhasePath {
    pub fn words(&self) -> &[String] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The paths predicted when none are asked for: the empty path, then systemd-measure's
    /// default paths.
    pub fn defaults() -> Vec<PhasePath> {
        std::iter::once(PhasePath::default())
            .chain(
                DEFAULT_PHASE_PATHS
                    .iter()
                    .map(|p| p.parse().unwrap_or_default()),
            )
            .collect()
    }

    /// Sorts and deduplicates paths the way systemd-measure does (`strv_sort_uniq` on the
    /// normalised strings).
    pub fn sort_uniq(mut paths: Vec<PhasePath>) -> Vec<PhasePath> {
        paths.sort_by_key(|p| p.to_string());
        paths.dedup();
        paths
    }
}

impl fmt::Display for PhasePath {
    /// The normalised, colon-joined form; the empty path displays as an empty string.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(":"))
    }
}

impl FromStr for PhasePath {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let words: Vec<String> = s
            .split(':')
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(bad) = words
            .iter()
            .find(|w| !w.bytes().all(|b| b.is_ascii_graphic() && b != b':'))
        {
            return Err(Error::InvalidInput(format!(
                "phase word {bad:?} in {s:?} must be printable ASCII without spaces"
            )));
        }
        Ok(PhasePath(words))
    }
}

/// A section of a UKI with the bytes the stub will measure.
#[derive(Debug, Clone, Copy)]
pub struct MeasuredSection<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
}

/// One PCR 11 section measurement: the section name, the name bytes hashed (with NUL), and the
/// content hashed.
pub type SectionMeasurement<'a> = (&'static str, Vec<u8>, &'a [u8]);

/// The byte strings the stub hashes into PCR 11 for these sections, in measurement order.
/// Sections the stub does not know, `.pcrsig`, and empty sections are left out; a measured
/// section name present twice is an error (the stub would use only one of them).
pub fn pcr11_event_data<'a>(
    semantics: StubSemantics,
    sections: &[MeasuredSection<'a>],
) -> Result<Vec<SectionMeasurement<'a>>, Error> {
    Ok(
        measured_in_order(semantics, sections, |s| s.name, |s| s.data.is_empty())?
            .into_iter()
            .map(|(name, s)| {
                let (buf, n) = name_bytes(name);
                (name, buf[..n].to_vec(), s.data)
            })
            .collect(),
    )
}

/// The sections the stub measures, in its order, each with its canonical name: the one rule
/// (known names, non-empty, no name twice) behind [`pcr11_event_data`] and
/// [`predict_from_section_digests`].
fn measured_in_order<T>(
    semantics: StubSemantics,
    sections: &[T],
    name_of: impl Fn(&T) -> &str,
    is_empty: impl Fn(&T) -> bool,
) -> Result<Vec<(&'static str, &T)>, Error> {
    let mut events = Vec::new();
    for name in semantics.measured_sections() {
        let mut found = sections
            .iter()
            .filter(|s| name_of(s) == name && !is_empty(s));
        if let Some(s) = found.next() {
            if found.next().is_some() {
                return Err(Error::InvalidInput(format!(
                    "section {name} appears more than once; the stub measures only one"
                )));
            }
            events.push((name, s));
        }
    }
    Ok(events)
}

/// One predicted value, serialised in systemd-measure's JSON shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcrValue {
    #[serde(default)]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub phase: String,
    pub pcr: u32,
    pub hash: String,
}

/// Predicted PCR 11 values, per bank in the order asked, per phase path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prediction {
    pub banks: Vec<(HashAlg, Vec<(PhasePath, Digest)>)>,
}

impl Prediction {
    /// `{"sha1":[{"phase":…,"pcr":11,"hash":…}],…}` exactly as systemd-measure prints it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.to_pcrs_json()).unwrap_or_default()
    }

    /// The same, typed (the `pcrs` of [`crate::manifest::Manifest`]).
    pub fn to_pcrs_json(&self) -> crate::manifest::PcrsJson {
        self.banks
            .iter()
            .map(|(bank, values)| {
                let list = values
                    .iter()
                    .map(|(p, d)| PcrValue {
                        phase: p.to_string(),
                        pcr: PCR_KERNEL_IMAGE,
                        hash: d.to_hex(),
                    })
                    .collect();
                (bank.to_string(), list)
            })
            .collect()
    }

    /// The value for one bank and phase path.
    pub fn get(&self, bank: HashAlg, phase: &PhasePath) -> Option<&Digest> {
        self.banks
            .iter()
            .find(|(b, _)| *b == bank)?
            .1
            .iter()
            .find(|(p, _)| p == phase)
            .map(|(_, d)| d)
    }
}

/// Predicts PCR 11 for the given sections in every bank and phase path.
///
/// Every (bank, event) digest is computed once, in parallel across both banks and sections, so
/// large sections in slow banks (sha384/sha512) overlap with the rest.
pub fn predict_pcr11(
    semantics: StubSemantics,
    sections: &[MeasuredSection<'_>],
    banks: &[HashAlg],
    phases: &[PhasePath],
) -> Result<Prediction, Error> {
    let contents: Vec<&[u8]> = sections.iter().map(|s| s.data).collect();
    let digests = digest_matrix(banks, &contents)?;
    let with_digests: Vec<(&str, &[u8], &[Digest])> = sections
        .iter()
        .zip(&digests)
        .map(|(s, d)| (s.name, s.data, d.as_slice()))
        .collect();
    predict_from_digests(semantics, &with_digests, banks, phases)
}

/// PCR 11 on a machine that makes `choice` of the UKI's `.dtbauto` sections
/// ([`crate::uki::DtbChoice`]); with `None` (the machine is not known), one prediction per
/// `.dtbauto` the stub may select and one for "none selected" first. Before 257 (no `.dtbauto`
/// selection) and for UKIs without `.dtbauto`, one row. Each measured section is digested once
/// per bank, whatever the number of rows.
pub fn predict_pcr11_per_dtb(
    semantics: StubSemantics,
    sections: &[crate::uki::SectionData<'_>],
    banks: &[HashAlg],
    phases: &[PhasePath],
    choice: Option<&crate::uki::DtbChoice>,
) -> Result<Vec<(Option<crate::uki::DtbCandidate>, Prediction)>, Error> {
    let infos: Vec<SectionInfo<'_>> = sections
        .iter()
        .map(|(name, data)| SectionInfo {
            name,
            len: data.len() as u64,
            content: data,
        })
        .collect();
    let wanted = sections_to_digest(semantics, &infos);
    let contents: Vec<&[u8]> = wanted.iter().map(|&i| sections[i].1.as_ref()).collect();
    let mut digests = vec![Vec::new(); sections.len()];
    for (i, d) in wanted.into_iter().zip(digest_matrix(banks, &contents)?) {
        digests[i] = d;
    }
    predict_per_dtb_from_digests(semantics, &infos, &digests, banks, phases, choice)
}

/// A section of the profile booted, as the predictor needs it: its name, the number of bytes
/// the stub measures (`VirtualSize`), and its content where what is measured depends on it
/// (`.dtbauto`, which the stub selects by its devicetree; other sections may leave it empty).
#[derive(Debug, Clone, Copy)]
pub struct SectionInfo<'a> {
    pub name: &'a str,
    pub len: u64,
    pub content: &'a [u8],
}

/// Which of `sections` the stub may measure under some `.dtbauto` choice (names it measures,
/// not empty): the ones [`predict_per_dtb_from_digests`] needs digests of.
pub fn sections_to_digest(semantics: StubSemantics, sections: &[SectionInfo<'_>]) -> Vec<usize> {
    sections
        .iter()
        .enumerate()
        .filter(|(_, s)| s.len > 0 && semantics.measured_sections().any(|m| m == s.name))
        .map(|(i, _)| i)
        .collect()
}

/// [`predict_pcr11_per_dtb`] from digests already computed: `digests[i]` holds section `i`'s
/// in the order of `banks` (empty for a section [`sections_to_digest`] did not name; a
/// measured section without digests is an error).
pub fn predict_per_dtb_from_digests(
    semantics: StubSemantics,
    sections: &[SectionInfo<'_>],
    digests: &[Vec<Digest>],
    banks: &[HashAlg],
    phases: &[PhasePath],
    choice: Option<&crate::uki::DtbChoice>,
) -> Result<Vec<(Option<crate::uki::DtbCandidate>, Prediction)>, Error> {
    use crate::uki::{dtbauto_candidates_of, kept_for_dtb_choice, DtbChoice};
    let pairs = || sections.iter().map(|s| (s.name, s.content));
    let mut choices = Vec::new();
    match choice {
        Some(c) => choices.push((None, c.clone())),
        None => {
            choices.push((None, DtbChoice::None));
            if semantics.knows(".dtbauto") {
                for c in dtbauto_candidates_of(pairs()).0 {
                    let choice = DtbChoice::Compatible(c.compatible.clone());
                    choices.push((Some(c), choice));
                }
            }
        }
    }
    choices
        .into_iter()
        .map(|(c, choice)| {
            let kept = kept_for_dtb_choice(pairs(), &choice);
            let selected: Vec<(&str, u64, &[Digest])> = sections
                .iter()
                .zip(digests)
                .zip(kept)
                .filter(|(_, k)| *k)
                .map(|((s, d), _)| (s.name, s.len, d.as_slice()))
                .collect();
            Ok((
                c,
                predict_from_section_digests(semantics, &selected, banks, phases)?,
            ))
        })
        .collect()
}

/// Relative cost per byte of a bank, only to order work: SHA-1 and SHA-256 run on the SHA
/// extensions at about 1.7–1.9 GB per CPU-second, SHA-384 and SHA-512 (64-bit rounds, no SHA-NI
/// support; OpenSSL's AVX2 code) at about 0.8 (`cargo run --release -p imgctl-measure --example
/// sha_rates`).
fn cost_per_byte(bank: HashAlg) -> u64 {
    match bank {
        HashAlg::SHA1 | HashAlg::SHA256 => 2,
        _ => 5,
    }
}

/// `EV_EVENT_TAG` ID of the profile the stub boots (systemd 257 `UKI_PROFILE_EVENT_TAG_ID`).
pub const PROFILE_EVENT_TAG_ID: u32 = 0x13ae_d6db;

/// The bytes a systemd-stub 257+ hashes into PCR 12 when it boots `profile` of a multi-profile
/// UKI (`measure_profile()`: the decimal number in UTF-16LE with its NUL, an `EV_EVENT_TAG`
/// with [`PROFILE_EVENT_TAG_ID`]); `None` for profile 0 or a stub before 257, which measure
/// nothing.
pub fn profile_event_data(semantics: StubSemantics, profile: u32) -> Option<Vec<u8>> {
    if profile == 0 || semantics < StubSemantics::Systemd257 {
        return None;
    }
    Some(utf16le_with_nul(&profile.to_string()))
}

/// A string as systemd-stub hashes UTF-16 text it measures (`strsize16`): UTF-16LE with the
/// terminating NUL.
pub fn utf16le_with_nul(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .collect()
}

/// Per bank: the profile tag event's digest and PCR 12 after it.
pub type ProfilePcr12 = Vec<(HashAlg, Digest, Digest)>;

/// The PCR 12 value right after the profile tag, per bank, with the tag's digest (`None` where
/// the stub measures no tag): what PCR 12 holds when nothing else (no addons, credentials) is
/// measured into it. `via_systemd_boot`: systemd-boot 257 started the profile's boot entry
/// (`uki.efi@ID`), passing `@N` as LoadOptions and measuring them into PCR 12 first
/// (`call_image_start()`: `tpm_log_load_options("@N")`); the stub strips `@N` and, with nothing
/// left, measures no command line.
pub fn profile_pcr12(
    semantics: StubSemantics,
    profile: u32,
    via_systemd_boot: bool,
    banks: &[HashAlg],
) -> Result<Option<ProfilePcr12>, Error> {
    let Some(data) = profile_event_data(semantics, profile) else {
        return Ok(None);
    };
    let options = utf16le_with_nul(&format!("@{profile}"));
    let mut out = Vec::new();
    for &bank in banks {
        let mut pcr = Pcr::reset(bank)?;
        if via_systemd_boot {
            let mut h = bank.hasher()?;
            h.update(&options);
            pcr.extend(&h.finish());
        }
        let mut h = bank.hasher()?;
        h.update(&data);
        let ev = h.finish();
        pcr.extend(&ev);
        out.push((bank, ev, pcr.value().clone()));
    }
    Ok(Some(out))
}

/// `H_bank(data)` for every bank (inner) and every input (outer), all pairs in parallel.
///
/// Each (input, bank) pair is one job, hashed once from the bytes already in memory. The jobs
/// are handed out longest first from one queue to one worker per core (greedy LPT
/// scheduling), so the two slow banks of the largest section start at once on different
/// cores and the short jobs fill in behind them: the wall time comes close to the total over
/// the number of cores.
pub fn digest_matrix(banks: &[HashAlg], inputs: &[&[u8]]) -> Result<Vec<Vec<Digest>>, Error> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut jobs: Vec<(usize, usize)> = (0..inputs.len())
        .flat_map(|i| (0..banks.len()).map(move |b| (i, b)))
        .collect();
    let cost =
        |&(i, b): &(usize, usize)| (inputs[i].len() as u64).saturating_mul(cost_per_byte(banks[b]));
    jobs.sort_by_key(|j| std::cmp::Reverse(cost(j)));
    let next = AtomicUsize::new(0);
    let workers = rayon::current_num_threads().clamp(1, jobs.len().max(1));
    let done: Vec<Vec<(usize, usize, Digest)>> = (0..workers)
        .into_par_iter()
        .with_max_len(1)
        .map(|_| {
            let mut mine = Vec::new();
            loop {
                let Some(&(i, b)) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return Ok(mine);
                };
                mine.push((i, b, banks[b].hash_large(inputs[i])?));
            }
        })
        .collect::<Result<_, crate::bank::UnsupportedAlg>>()?;
    let mut out: Vec<Vec<Option<Digest>>> = vec![vec![None; banks.len()]; inputs.len()];
    for (i, b, d) in done.into_iter().flatten() {
        out[i][b] = Some(d);
    }
    out.into_iter()
        .map(|row| {
            row.into_iter()
                .collect::<Option<Vec<Digest>>>()
                .ok_or_else(|| Error::InvalidInput("a section digest was not computed".into()))
        })
        .collect()
}

/// Predicts PCR 11 from sections whose content digests are already known: `(name, content,
/// digests in the order of banks)`. Used by the builder, which digests every section once for
/// its manifest and its prediction alike.
pub fn predict_from_digests(
    semantics: StubSemantics,
    sections: &[(&str, &[u8], &[Digest])],
    banks: &[HashAlg],
    phases: &[PhasePath],
) -> Result<Prediction, Error> {
    let known: Vec<(&str, u64, &[Digest])> = sections
        .iter()
        .map(|(name, data, digests)| (*name, data.len() as u64, *digests))
        .collect();
    predict_from_section_digests(semantics, &known, banks, phases)
}

/// Predicts PCR 11 from sections known only by name, content length (the `VirtualSize` bytes
/// the stub measures) and content digests in the order of `banks`: for a builder that streams
/// large sections to disk and hashes them on the way, never holding them in memory.
pub fn predict_from_section_digests(
    semantics: StubSemantics,
    sections: &[(&str, u64, &[Digest])],
    banks: &[HashAlg],
    phases: &[PhasePath],
) -> Result<Prediction, Error> {
    let events = measured_in_order(semantics, sections, |s| s.0, |s| s.1 == 0)?;
    let mut out = Vec::with_capacity(banks.len());
    for (i, bank) in banks.iter().enumerate() {
        let mut pcr = Pcr::reset(*bank)?;
        for (name, (_, _, digests)) in &events {
            let (buf, n) = name_bytes(name);
            pcr.extend_data(&buf[..n]);
            let content = digests.get(i).ok_or_else(|| {
                Error::InvalidInput(format!("no {bank} digest for section {name}"))
            })?;
            pcr.extend(content);
        }
        let mut values = Vec::with_capacity(phases.len());
        for phase in phases {
            let mut p = pcr.clone();
            for word in phase.words() {
                p.extend_data(word.as_bytes());
            }
            values.push((phase.clone(), p.value().clone()));
        }
        out.push((*bank, values));
    }
    Ok(Prediction { banks: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e1(sections: &[MeasuredSection<'_>], phase: &str) -> String {
        let p = predict_pcr11(
            StubSemantics::Systemd252,
            sections,
            &[HashAlg::SHA256],
            &[phase.parse().unwrap()],
        )
        .unwrap();
        p.banks[0].1[0].1.to_hex()
    }

    /// ../shared/reference/systemd.md §9 E1, values printed by Debian's systemd-measure 252.
    #[test]
    fn the_profile_tag_is_the_decimal_number_in_utf16_with_nul() {
        assert_eq!(
            profile_event_data(StubSemantics::Systemd257, 12),
            Some(vec![b'1', 0, b'2', 0, 0, 0])
        );
        assert_eq!(profile_event_data(StubSemantics::Systemd257, 0), None);
        assert_eq!(profile_event_data(StubSemantics::Systemd256, 1), None);
    }

    #[test]
    fn reproduces_systemd_measure_vectors() {
        let linux = MeasuredSection {
            name: ".linux",
            data: b"A",
        };
        let osrel = MeasuredSection {
            name: ".osrel",
            data: b"ID=test\n",
        };
        let cmdline = MeasuredSection {
            name: ".cmdline",
            data: b"quiet",
        };
        assert_eq!(
            e1(&[linux], ":"),
            "0a7ff16282ca19a55360c6e428cad84a2965eeaf5bbe24010ca598c2fbe5d92a"
        );
        assert_eq!(
            e1(&[linux], "enter-initrd:leave-initrd:sysinit:ready"),
            "7397cfd6bd191e12c42e759bbff70bc91e2348f1b4e0f8d4b06d25fd16026112"
        );
        // PE file order does not matter; canonical order does.
        assert_eq!(
            e1(&[cmdline, osrel, linux], "enter-initrd:leave-initrd"),
            "6f7f5dc72a319ad014871af27a5b559a654f34135d8894d56d42a7e25a863810"
        );
    }

    #[test]
    fn phase_paths_normalise_like_systemd_measure() {
        let p: PhasePath = "::enter-initrd::leave-initrd:".parse().unwrap();
        assert_eq!(p.to_string(), "enter-initrd:leave-initrd");
        assert!(":".parse::<PhasePath>().unwrap().is_empty());
        assert!("enter initrd".parse::<PhasePath>().is_err());
        let sorted = PhasePath::sort_uniq(vec![
            "ready".parse().unwrap(),
            ":".parse().unwrap(),
            "ready".parse().unwrap(),
        ]);
        assert_eq!(sorted.len(), 2);
        assert!(sorted[0].is_empty());
    }

    #[test]
    fn duplicate_measured_sections_are_refused() {
        let a = MeasuredSection {
            name: ".linux",
            data: b"A",
        };
        assert!(pcr11_event_data(StubSemantics::LATEST, &[a, a]).is_err());
    }

    #[test]
    fn v252_ignores_sections_it_does_not_know() {
        let linux = MeasuredSection {
            name: ".linux",
            data: b"A",
        };
        let uname = MeasuredSection {
            name: ".uname",
            data: b"6.1.0",
        };
        assert_eq!(e1(&[linux, uname], ":"), e1(&[linux], ":"));
        let up = |s: &[MeasuredSection<'_>]| {
            predict_pcr11(
                StubSemantics::LATEST,
                s,
                &[HashAlg::SHA256],
                &[PhasePath::default()],
            )
            .unwrap()
        };
        assert_ne!(up(&[linux, uname]), up(&[linux]));
    }
}
