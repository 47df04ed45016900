//! Which NRI API level the runtime on the other end speaks.
//!
//! Runtimes drop message fields they do not know and never call RPCs they do
//! not know, so almost everything is compatible in both directions. The one
//! exception is the event mask: a runtime rejects the plugin ("invalid plugin
//! events") if ConfigureResponse.events has a bit it does not know. So the
//! level decides which events may be subscribed to.
//!
//! NRI v0.12+ runtimes report their module version in
//! ConfigureRequest.nri_version. Older ones only say who they are
//! (runtime_name, runtime_version); for containerd the NRI module it vendors
//! is known per release. Anything else is assumed to be the oldest level this
//! crate supports, whose events every later runtime also accepts.

use std::fmt;

use crate::error::NriError;
use crate::events::EventMask;
use crate::generated::api::ConfigureRequest;

/// A `major.minor.patch` version, compared numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Reads the leading `[v]MAJOR.MINOR[.PATCH]` of a version string and
    /// ignores any suffix ("1.7.24~ds1", "2.1.9+unknown", "v0.12.0-rc.1").
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let text = text.strip_prefix('v').unwrap_or(text);
        let mut parts = text.splitn(3, '.').map(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        let major = parts.next()??;
        let minor = parts.next()??;
        // A missing patch counts as 0; a present but non-numeric one is junk.
        let patch = match parts.next() {
            None => 0,
            Some(p) => p?,
        };
        Some(Self(major, minor, patch))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The NRI version this crate's `specs/nri/api.proto` follows; sent in
/// RegisterPluginRequest.nri_version (runtimes only log it).
pub const API_VERSION: Version = Version(0, 12, 2);

/// The oldest NRI version this crate speaks (containerd 1.7.16 to 1.7.25).
pub const OLDEST: Version = Version(0, 6, 1);

/// How the runtime's NRI level was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// ConfigureRequest.nri_version (NRI v0.12+ runtimes).
    Reported,
    /// The NRI module a known containerd release vendors.
    RuntimeRelease,
    /// Nothing usable: assumed [`OLDEST`].
    Assumed,
}

/// The NRI level of the runtime a session talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeLevel {
    /// NRI module version of the runtime.
    pub nri: Version,
    /// Where `nri` came from.
    pub evidence: Evidence,
}

impl RuntimeLevel {
    /// The level announced or implied by a ConfigureRequest.
    pub fn of(req: &ConfigureRequest) -> Self {
        if let Some(v) = Version::parse(&req.nri_version) {
            return Self {
                nri: v,
                evidence: Evidence::Reported,
            };
        }
        let known = (req.runtime_name == "containerd")
            .then(|| Version::parse(&req.runtime_version).and_then(containerd_nri))
            .flatten();
        match known {
            Some(v) => Self {
                nri: v,
                evidence: Evidence::RuntimeRelease,
            },
            None => Self {
                nri: OLDEST,
                evidence: Evidence::Assumed,
            },
        }
    }

    /// Every event this runtime accepts in a subscription.
    pub fn valid_events(self) -> EventMask {
        if self.nri >= Version(0, 10, 0) {
            EventMask::ALL
        } else {
            EventMask::V0_6_EVENTS
        }
    }

    /// The mask to answer Configure with, for the events a handler wants.
    ///
    /// An empty `wanted` means every event, but the answer is never 0: a
    /// runtime reads 0 as "all I know", which on v0.10+ includes
    /// ValidateContainerAdjustment, a call with no fallback that a handler
    /// must opt into explicitly. Events the runtime does not know are left
    /// out (and returned second, for the log) instead of getting the plugin
    /// rejected; if nothing is left, that is an error.
    pub fn subscription(self, wanted: EventMask) -> Result<(EventMask, EventMask), NriError> {
        let wanted = if wanted.is_empty() {
            EventMask::ALL.difference(EventMask::VALIDATE_CONTAINER_ADJUSTMENT)
        } else {
            wanted
        };
        let valid = self.valid_events();
        let kept = wanted.intersection(valid);
        if kept.is_empty() {
            return Err(NriError::NoEventsAtLevel {
                wanted: wanted.bits(),
                nri: self.nri,
            });
        }
        Ok((kept, wanted.difference(valid)))
    }

    /// True if the runtime calls the dedicated pod and container event RPCs
    /// (RunPodSandbox, StartContainer, ...) before falling back to
    /// StateChange.
    pub fn has_dedicated_event_rpcs(self) -> bool {
        self.nri >= Version(0, 12, 0)
    }
}

impl fmt::Display for RuntimeLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match self.evidence {
            Evidence::Reported => "reported",
            Evidence::RuntimeRelease => "from the runtime release",
            Evidence::Assumed => "assumed",
        };
        write!(f, "NRI {} ({how})", self.nri)
    }
}

/// The NRI module a containerd release vendors (its go.mod), for releases
/// that do not report it themselves. `None` before 1.7.16, whose NRI
/// predates v0.6.1's wire protocol as far as this crate has checked.
fn containerd_nri(c: Version) -> Option<Version> {
    let v = match c {
        Version(1, 7, p) if p >= 26 => Version(0, 8, 0),
        Version(1, 7, p) if p >= 16 => Version(0, 6, 1),
        Version(2, 0 | 1, _) => Version(0, 8, 0),
        Version(2, 2, 0) => Version(0, 10, 0),
        Version(2, 2, _) => Version(0, 11, 0),
        // 2.3+ reports nri_version; if one does not, v0.12 is its floor.
        Version(2, m, _) if m >= 3 => Version(0, 12, 0),
        Version(major, _, _) if major >= 3 => Version(0, 12, 0),
        _ => return None,
    };
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configure(name: &str, version: &str, nri: &str) -> ConfigureRequest {
        ConfigureRequest {
            runtime_name: name.into(),
            runtime_version: version.into(),
            nri_version: nri.into(),
            ..Default::default()
        }
    }

    #[test]
    fn versions_parse_with_debian_and_build_suffixes() {
        assert_eq!(Version::parse("1.7.24~ds1"), Some(Version(1, 7, 24)));
        assert_eq!(Version::parse("2.1.9+unknown"), Some(Version(2, 1, 9)));
        assert_eq!(Version::parse("v0.12.0-rc.1"), Some(Version(0, 12, 0)));
        assert_eq!(Version::parse("v2.3"), Some(Version(2, 3, 0)));
        assert_eq!(Version::parse(""), None);
        assert_eq!(Version::parse("main"), None);
        assert_eq!(Version::parse("2"), None);
        assert_eq!(Version::parse("2.x.1"), None);
    }

    #[test]
    fn containerd_releases_map_to_the_nri_module_they_vendor() {
        let cases = [
            ("1.7.24~ds1", Version(0, 6, 1)),
            ("1.7.26", Version(0, 8, 0)),
            ("2.0.7", Version(0, 8, 0)),
            ("2.1.9+unknown", Version(0, 8, 0)),
            ("v2.2.0", Version(0, 10, 0)),
            ("2.2.1", Version(0, 11, 0)),
            ("2.3.0", Version(0, 12, 0)),
        ];
        for (release, nri) in cases {
            let level = RuntimeLevel::of(&configure("containerd", release, ""));
            assert_eq!(level.nri, nri, "containerd {release}");
            assert_eq!(
                level.evidence,
                Evidence::RuntimeRelease,
                "containerd {release}"
            );
        }
    }

    #[test]
    fn reported_nri_version_wins_over_the_release_table() {
        let level = RuntimeLevel::of(&configure("containerd", "1.7.24", "v0.12.1"));
        assert_eq!(level.nri, Version(0, 12, 1));
        assert_eq!(level.evidence, Evidence::Reported);
        assert!(level.has_dedicated_event_rpcs());
    }

    #[test]
    fn unknown_runtimes_and_old_releases_get_the_oldest_level() {
        for req in [
            configure("cri-o", "1.33.0", ""),
            configure("containerd", "1.7.0", ""),
            configure("containerd", "garbage", ""),
            ConfigureRequest::new(),
        ] {
            let level = RuntimeLevel::of(&req);
            assert_eq!(level.nri, OLDEST, "{req:?}");
            assert_eq!(level.evidence, Evidence::Assumed);
            assert_eq!(level.valid_events(), EventMask::V0_6_EVENTS);
        }
    }

    #[test]
    fn subscriptions_keep_only_events_the_runtime_knows() {
        let v06 = RuntimeLevel::of(&configure("containerd", "1.7.24~ds1", ""));
        let v12 = RuntimeLevel::of(&configure("containerd", "2.3.0", "v0.12.0"));
        let create_and_remove = EventMask::CREATE_CONTAINER | EventMask::REMOVE_POD_SANDBOX;
        for level in [v06, v12] {
            let (kept, dropped) = level.subscription(create_and_remove).expect("valid");
            assert_eq!((kept, dropped.bits()), (create_and_remove, 0));
        }

        let with_pod_update = create_and_remove | EventMask::UPDATE_POD_SANDBOX;
        let (kept, dropped) = v06.subscription(with_pod_update).expect("valid");
        assert_eq!(
            (kept, dropped),
            (create_and_remove, EventMask::UPDATE_POD_SANDBOX)
        );
        let (kept, _) = v12.subscription(with_pod_update).expect("valid");
        assert_eq!(kept, with_pod_update);

        // "Everything" is spelled out, and never includes validation.
        let (kept, _) = v06
            .subscription(EventMask::from_bits(0).expect("0"))
            .expect("valid");
        assert_eq!(kept.bits(), 0x7ff);
        let (kept, _) = v12
            .subscription(EventMask::from_bits(0).expect("0"))
            .expect("valid");
        assert_eq!(kept.bits(), 0x1fff);

        assert!(matches!(
            v06.subscription(EventMask::VALIDATE_CONTAINER_ADJUSTMENT),
            Err(NriError::NoEventsAtLevel {
                wanted: 0x2000,
                nri: OLDEST
            })
        ));
    }

    #[test]
    fn pod_update_and_validation_events_start_at_v0_10() {
        let v08 = RuntimeLevel::of(&configure("containerd", "2.1.9", ""));
        assert_eq!(v08.valid_events().bits(), 0x7ff);
        assert!(!v08.has_dedicated_event_rpcs());
        let v10 = RuntimeLevel::of(&configure("containerd", "2.2.0", ""));
        assert_eq!(v10.valid_events().bits(), 0x3fff);
        assert!(!v10.has_dedicated_event_rpcs());
    }
}
