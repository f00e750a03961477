//! Discoverable Partitions Specification (UAPI, `specs/discoverable_partitions_specification.md`):
//! partition type GUIDs per architecture and what they designate. See `reference/systemd.md` §6.2.

use std::fmt;

use crate::gpt::Guid;

/// A CPU architecture in systemd's spelling (`ARCHITECTURE=` in extension-release).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Architecture {
    X86_64,
    Arm64,
}

impl Architecture {
    pub const ALL: [Architecture; 2] = [Architecture::X86_64, Architecture::Arm64];

    /// systemd's name (`x86-64`, `arm64`).
    pub fn name(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86-64",
            Architecture::Arm64 => "arm64",
        }
    }

    /// The architecture this program was built for, if it has DPS types here.
    pub fn native() -> Option<Architecture> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Architecture::X86_64),
            "aarch64" => Some(Architecture::Arm64),
            _ => None,
        }
    }

    pub fn from_name(name: &str) -> Option<Architecture> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Designator {
    Root,
    Usr,
    RootVerity,
    UsrVerity,
    RootVeritySig,
    UsrVeritySig,
}

impl Designator {
    /// systemd-dissect's designator name.
    pub fn name(self) -> &'static str {
        match self {
            Designator::Root => "root",
            Designator::Usr => "usr",
            Designator::RootVerity => "root-verity",
            Designator::UsrVerity => "usr-verity",
            Designator::RootVeritySig => "root-verity-sig",
            Designator::UsrVeritySig => "usr-verity-sig",
        }
    }

    /// The verity and signature designators that go with a data designator.
    pub fn verity_pair(self) -> Option<(Designator, Designator)> {
        match self {
            Designator::Root => Some((Designator::RootVerity, Designator::RootVeritySig)),
            Designator::Usr => Some((Designator::UsrVerity, Designator::UsrVeritySig)),
            _ => None,
        }
    }
}

const TABLE: [(Architecture, Designator, &str); 12] = [
    (
        Architecture::X86_64,
        Designator::Root,
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
    ),
    (
        Architecture::X86_64,
        Designator::Usr,
        "8484680c-9521-48c6-9c11-b0720656f69e",
    ),
    (
        Architecture::X86_64,
        Designator::RootVerity,
        "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5",
    ),
    (
        Architecture::X86_64,
        Designator::UsrVerity,
        "77ff5f63-e7b6-4633-acf4-1565b864c0e6",
    ),
    (
        Architecture::X86_64,
        Designator::RootVeritySig,
        "41092b05-9fc8-4523-994f-2def0408b176",
    ),
    (
        Architecture::X86_64,
        Designator::UsrVeritySig,
        "e7bb33fb-06cf-4e81-8273-e543b413e2e2",
    ),
    (
        Architecture::Arm64,
        Designator::Root,
        "b921b045-1df0-41c3-af44-4c6f280d3fae",
    ),
    (
        Architecture::Arm64,
        Designator::Usr,
        "b0e01050-ee5f-4390-949a-9101b17104e9",
    ),
    (
        Architecture::Arm64,
        Designator::RootVerity,
        "df3300ce-d69f-4c92-978c-9bfb0f38d820",
    ),
    (
        Architecture::Arm64,
        Designator::UsrVerity,
        "6e11a4e7-fbca-4ded-b9e9-e1a512bb664e",
    ),
    (
        Architecture::Arm64,
        Designator::RootVeritySig,
        "6db69de6-29f4-4758-a7a5-962190f00ce3",
    ),
    (
        Architecture::Arm64,
        Designator::UsrVeritySig,
        "c23ce4ff-44bd-4b00-b2d4-b41b3419e02a",
    ),
];

/// A GPT partition type: an open set of GUIDs, some of which the DPS names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartitionType(pub Guid);

impl PartitionType {
    pub fn of(arch: Architecture, designator: Designator) -> PartitionType {
        let text = TABLE
            .iter()
            .find(|(a, d, _)| *a == arch && *d == designator)
            .map_or("00000000-0000-0000-0000-000000000000", |(_, _, g)| *g);
        PartitionType(text.parse().unwrap_or_default())
    }

    /// The architecture and designator, when the DPS table here knows the GUID.
    pub fn lookup(self) -> Option<(Architecture, Designator)> {
        TABLE
            .iter()
            .find(|(_, _, g)| g.parse::<Guid>().is_ok_and(|g| g == self.0))
            .map(|(a, d, _)| (*a, *d))
    }

    /// The name systemd-repart gives such a partition (`usr-x86-64-verity`), used as its label.
    pub fn repart_name(self) -> Option<String> {
        let (a, d) = self.lookup()?;
        let base = match d {
            Designator::Root | Designator::RootVerity | Designator::RootVeritySig => "root",
            Designator::Usr | Designator::UsrVerity | Designator::UsrVeritySig => "usr",
        };
        let suffix = match d {
            Designator::Root | Designator::Usr => "",
            Designator::RootVerity | Designator::UsrVerity => "-verity",
            Designator::RootVeritySig | Designator::UsrVeritySig => "-verity-sig",
        };
        Some(format!("{base}-{}{suffix}", a.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_parses_and_round_trips() {
        for (a, d, g) in TABLE {
            let t = PartitionType::of(a, d);
            assert_eq!(t.0.to_string(), g);
            assert_eq!(t.lookup(), Some((a, d)));
        }
        assert_eq!(
            PartitionType::of(Architecture::X86_64, Designator::UsrVeritySig)
                .repart_name()
                .as_deref(),
            Some("usr-x86-64-verity-sig")
        );
    }
}
