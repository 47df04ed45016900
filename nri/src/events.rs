//! Event subscription masks for ConfigureResponse.events.

use std::fmt;
use std::ops::{BitOr, BitOrAssign};
use std::str::FromStr;

use crate::error::NriError;
use crate::generated::api::Event;

/// A set of NRI events, as sent in ConfigureResponse.events.
///
/// Event `N` is bit `1 << (N - 1)`. A runtime reads an empty mask (0) as
/// "every event I know" and rejects any bit it does not know: v0.6.1-v0.9
/// know [`EventMask::V0_6_EVENTS`], v0.10+ [`EventMask::ALL`]. A mask can only
/// be built from bits defined in [`EventMask::ALL`]; the session clips it to
/// the runtime's level (see [`crate::RuntimeLevel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventMask(u32);

impl EventMask {
    /// RunPodSandbox, delivered through StateChange.
    pub const RUN_POD_SANDBOX: Self = Self(1 << 0);
    /// StopPodSandbox, delivered through StateChange.
    pub const STOP_POD_SANDBOX: Self = Self(1 << 1);
    /// RemovePodSandbox, delivered through StateChange.
    pub const REMOVE_POD_SANDBOX: Self = Self(1 << 2);
    /// CreateContainer, delivered as its own RPC.
    pub const CREATE_CONTAINER: Self = Self(1 << 3);
    /// PostCreateContainer, delivered through StateChange.
    pub const POST_CREATE_CONTAINER: Self = Self(1 << 4);
    /// StartContainer, delivered through StateChange.
    pub const START_CONTAINER: Self = Self(1 << 5);
    /// PostStartContainer, delivered through StateChange.
    pub const POST_START_CONTAINER: Self = Self(1 << 6);
    /// UpdateContainer, delivered as its own RPC.
    pub const UPDATE_CONTAINER: Self = Self(1 << 7);
    /// PostUpdateContainer, delivered through StateChange.
    pub const POST_UPDATE_CONTAINER: Self = Self(1 << 8);
    /// StopContainer, delivered as its own RPC.
    pub const STOP_CONTAINER: Self = Self(1 << 9);
    /// RemoveContainer, delivered through StateChange.
    pub const REMOVE_CONTAINER: Self = Self(1 << 10);
    /// UpdatePodSandbox (v0.10+), delivered as its own RPC only: there is no
    /// StateChange fallback.
    pub const UPDATE_POD_SANDBOX: Self = Self(1 << 11);
    /// PostUpdatePodSandbox (v0.10+), through StateChange before v0.12.
    pub const POST_UPDATE_POD_SANDBOX: Self = Self(1 << 12);
    /// ValidateContainerAdjustment (v0.10+), as its own RPC only.
    pub const VALIDATE_CONTAINER_ADJUSTMENT: Self = Self(1 << 13);
    /// Every event NRI v0.6.1 to v0.9 define (0x7ff).
    pub const V0_6_EVENTS: Self = Self(0x7ff);
    /// Every event the newest supported NRI (v0.12) defines (0x3fff).
    pub const ALL: Self = Self(0x3fff);

    /// Builds a mask from raw bits, refusing bits outside [`EventMask::ALL`].
    /// 0 is accepted: it stands for "all events".
    pub fn from_bits(bits: u32) -> Result<Self, NriError> {
        if bits & !Self::ALL.0 != 0 {
            return Err(NriError::InvalidEventMask(bits));
        }
        Ok(Self(bits))
    }

    /// The mask bit of one event; `None` for UNKNOWN and LAST.
    pub fn of(event: Event) -> Option<Self> {
        match event {
            Event::UNKNOWN | Event::LAST => None,
            other => Some(Self(1 << (other as u32 - 1))),
        }
    }

    /// Raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// True if no bit is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The bits set in both.
    pub const fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// The bits of `self` that are not in `other`.
    pub const fn difference(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// True if every bit of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// True if containerd will deliver `event` to a plugin subscribed with
    /// this mask (an empty mask means all events).
    pub fn delivers(self, event: Event) -> bool {
        match Self::of(event) {
            Some(bit) => self.0 == 0 || self.contains(bit),
            None => false,
        }
    }
}

impl BitOr for EventMask {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for EventMask {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl fmt::Display for EventMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Names accepted by [`EventMask::from_str`], in enum order.
const NAMES: [(&str, EventMask); 14] = [
    ("runpodsandbox", EventMask::RUN_POD_SANDBOX),
    ("stoppodsandbox", EventMask::STOP_POD_SANDBOX),
    ("removepodsandbox", EventMask::REMOVE_POD_SANDBOX),
    ("createcontainer", EventMask::CREATE_CONTAINER),
    ("postcreatecontainer", EventMask::POST_CREATE_CONTAINER),
    ("startcontainer", EventMask::START_CONTAINER),
    ("poststartcontainer", EventMask::POST_START_CONTAINER),
    ("updatecontainer", EventMask::UPDATE_CONTAINER),
    ("postupdatecontainer", EventMask::POST_UPDATE_CONTAINER),
    ("stopcontainer", EventMask::STOP_CONTAINER),
    ("removecontainer", EventMask::REMOVE_CONTAINER),
    ("updatepodsandbox", EventMask::UPDATE_POD_SANDBOX),
    ("postupdatepodsandbox", EventMask::POST_UPDATE_POD_SANDBOX),
    (
        "validatecontaineradjustment",
        EventMask::VALIDATE_CONTAINER_ADJUSTMENT,
    ),
];

impl FromStr for EventMask {
    type Err = NriError;

    /// Parses a comma-separated list of event names, case-insensitive and
    /// ignoring `_`/`-` (so `CreateContainer`, `create_container` and
    /// `CREATE-CONTAINER` are equal); `all` selects every event.
    fn from_str(s: &str) -> Result<Self, NriError> {
        let mut mask = Self(0);
        for raw in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let key: String = raw
                .chars()
                .filter(|c| *c != '_' && *c != '-')
                .map(|c| c.to_ascii_lowercase())
                .collect();
            if key == "all" {
                mask |= Self::ALL;
                continue;
            }
            match NAMES.iter().find(|(name, _)| *name == key) {
                Some((_, bit)) => mask |= *bit,
                None => return Err(NriError::UnknownEventName(raw.to_string())),
            }
        }
        Ok(mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_follow_event_numbers() {
        assert_eq!(EventMask::of(Event::RUN_POD_SANDBOX), Some(EventMask(0x1)));
        assert_eq!(EventMask::of(Event::CREATE_CONTAINER), Some(EventMask(0x8)));
        assert_eq!(
            EventMask::of(Event::UPDATE_CONTAINER),
            Some(EventMask(0x80))
        );
        assert_eq!(EventMask::of(Event::STOP_CONTAINER), Some(EventMask(0x200)));
        assert_eq!(
            EventMask::of(Event::REMOVE_CONTAINER),
            Some(EventMask(0x400))
        );
        assert_eq!(
            EventMask::of(Event::VALIDATE_CONTAINER_ADJUSTMENT),
            Some(EventMask(0x2000))
        );
        assert_eq!(EventMask::of(Event::UNKNOWN), None);
        assert_eq!(EventMask::of(Event::LAST), None);
        let all = NAMES.iter().fold(EventMask(0), |m, (_, b)| m | *b);
        assert_eq!(all, EventMask::ALL);
    }

    #[test]
    fn from_bits_rejects_undefined_bits() {
        assert!(EventMask::from_bits(0).is_ok());
        assert!(EventMask::from_bits(0x7ff).is_ok());
        assert!(EventMask::from_bits(0x3fff).is_ok());
        assert!(matches!(
            EventMask::from_bits(0x4000),
            Err(NriError::InvalidEventMask(0x4000))
        ));
        assert!(EventMask::from_bits(0x8000_0001).is_err());
    }

    #[test]
    fn empty_mask_delivers_everything() {
        let empty = EventMask::from_bits(0).expect("0 is valid");
        assert!(empty.delivers(Event::START_CONTAINER));
        let only_create = EventMask::CREATE_CONTAINER;
        assert!(only_create.delivers(Event::CREATE_CONTAINER));
        assert!(!only_create.delivers(Event::STOP_CONTAINER));
        assert!(!only_create.delivers(Event::UNKNOWN));
    }

    #[test]
    fn parses_names() {
        let m: EventMask = "CreateContainer, stop_container,REMOVE-CONTAINER"
            .parse()
            .expect("valid names");
        assert_eq!(
            m,
            EventMask::CREATE_CONTAINER | EventMask::STOP_CONTAINER | EventMask::REMOVE_CONTAINER
        );
        assert_eq!("all".parse::<EventMask>().ok(), Some(EventMask::ALL));
        assert!(matches!(
            "CreateContainer,Bogus".parse::<EventMask>(),
            Err(NriError::UnknownEventName(n)) if n == "Bogus"
        ));
    }
}
