//! A pod's RDMA request, read from its annotations. The keys are ConRDMA's public API; anything under
//! the prefix that is not understood is refused rather than ignored, so a typo never silently yields
//! an unlimited pod.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::network::StaticAddress;
use crate::rate::Rate;
use crate::ANNOTATION_PREFIX;

pub const KEY_BANDWIDTH: &str = "rdma.conrdma.io/bandwidth";
pub const KEY_LIMIT: &str = "rdma.conrdma.io/bandwidth-limit";
pub const KEY_POOL: &str = "rdma.conrdma.io/pool";
pub const KEY_CONTAINERS: &str = "rdma.conrdma.io/containers";
pub const KEY_HCA_HANDLES: &str = "rdma.conrdma.io/hca-handles";
pub const KEY_HCA_OBJECTS: &str = "rdma.conrdma.io/hca-objects";
/// A fixed address for the pod's VF in a pool with a network section.
pub const KEY_ADDRESS: &str = "rdma.conrdma.io/address";
/// Written by the NRI plugin on containers; a pod may not set it.
pub const KEY_ALLOCATION: &str = "rdma.conrdma.io/allocation";

const REQUEST_KEYS: [&str; 7] = [
    KEY_BANDWIDTH,
    KEY_LIMIT,
    KEY_POOL,
    KEY_CONTAINERS,
    KEY_HCA_HANDLES,
    KEY_HCA_OBJECTS,
    KEY_ADDRESS,
];

const NAME_FORM: &str = "a DNS label: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit";
const COUNT_FORM: &str = "a whole number from 1 to 2147483647";

/// A validated request. `guarantee == None` means best effort: a VF, no admitted share.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Request {
    pub guarantee: Option<Rate>,
    pub limit: Option<Rate>,
    pub pool: Option<String>,
    /// Containers that get the devices; `None` means all of the pod's containers.
    pub containers: Option<BTreeSet<String>>,
    pub hca_handles: Option<u32>,
    pub hca_objects: Option<u32>,
    /// `rdma.conrdma.io/address` as written (validated by [`StaticAddress::parse`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// Pod annotations from short keys: `("bandwidth", "10G")` becomes `rdma.conrdma.io/bandwidth`.
pub fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (format!("{ANNOTATION_PREFIX}{k}"), v.to_string()))
        .collect()
}

impl Request {
    /// Whether the pod has any `rdma.conrdma.io/` key, i.e. whether it is ours to admit or refuse.
    pub fn asked_for(annotations: &HashMap<String, String>) -> bool {
        annotations.keys().any(|k| k.starts_with(ANNOTATION_PREFIX))
    }

    /// Reads a pod's annotations. `Ok(None)`: the pod has no `rdma.conrdma.io/` key and is not ours.
    pub fn from_annotations(
        annotations: &HashMap<String, String>,
    ) -> Result<Option<Request>, ApiError> {
        // Sorted so that, of several bad keys, the same one is always reported.
        let mut ours: Vec<(&String, &String)> = annotations
            .iter()
            .filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX))
            .collect();
        if ours.is_empty() {
            return Ok(None);
        }
        ours.sort();
        let mut req = Request::default();
        for (key, value) in ours {
            let invalid = |reason: &str, accepted: &str| ApiError::InvalidAnnotation {
                key: key.clone(),
                value: value.clone(),
                reason: reason.to_string(),
                accepted: accepted.to_string(),
            };
            match key.as_str() {
                KEY_BANDWIDTH | KEY_LIMIT => {
                    let rate = Rate::parse(value).map_err(|e| match e {
                        ApiError::InvalidRate { reason, .. } => {
                            invalid(&reason, crate::rate::ACCEPTED_FORM)
                        }
                        other => other,
                    })?;
                    if key == KEY_BANDWIDTH {
                        req.guarantee = Some(rate);
                    } else {
                        req.limit = Some(rate);
                    }
                }
                KEY_POOL => {
                    let name = value.trim();
                    if !is_dns_label(name) {
                        return Err(invalid("not a pool name", NAME_FORM));
                    }
                    req.pool = Some(name.to_string());
                }
                KEY_CONTAINERS => {
                    let mut set = BTreeSet::new();
                    for part in value.split(',') {
                        let name = part.trim();
                        if !is_dns_label(name) {
                            return Err(invalid(
                                &format!("{name:?} is not a container name"),
                                &format!(
                                    "a comma-separated list of container names, each {NAME_FORM}"
                                ),
                            ));
                        }
                        set.insert(name.to_string());
                    }
                    req.containers = Some(set);
                }
                KEY_HCA_HANDLES | KEY_HCA_OBJECTS => {
                    let n = value
                        .trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=i32::MAX as u32).contains(n))
                        .ok_or_else(|| invalid("not a count", COUNT_FORM))?;
                    if key == KEY_HCA_HANDLES {
                        req.hca_handles = Some(n);
                    } else {
                        req.hca_objects = Some(n);
                    }
                }
                KEY_ADDRESS => {
                    StaticAddress::parse(value)?;
                    req.address = Some(value.trim().to_string());
                }
                KEY_ALLOCATION => {
                    return Err(invalid(
                        "is written by ConRDMA on containers and cannot be requested by a pod",
                        &format!("the keys {}", REQUEST_KEYS.join(", ")),
                    ))
                }
                _ => {
                    return Err(ApiError::UnknownAnnotation {
                        key: key.clone(),
                        known: REQUEST_KEYS.join(", "),
                    })
                }
            }
        }
        if let (Some(g), Some(l)) = (req.guarantee, req.limit) {
            if l < g {
                return Err(ApiError::InvalidAnnotation {
                    key: KEY_LIMIT.to_string(),
                    value: annotations.get(KEY_LIMIT).cloned().unwrap_or_default(),
                    reason: format!("the limit is below the guarantee {KEY_BANDWIDTH}={g}"),
                    accepted: "a rate at least the guarantee".to_string(),
                });
            }
        }
        Ok(Some(req))
    }

    /// Whether the container of this name gets the pod's devices.
    /// The pod's static address, if it asked for one (validated when the request was read).
    pub fn static_address(&self) -> Option<StaticAddress> {
        self.address
            .as_deref()
            .and_then(|a| StaticAddress::parse(a).ok())
    }

    pub fn applies_to(&self, container: &str) -> bool {
        self.containers
            .as_ref()
            .is_none_or(|set| set.contains(container))
    }

    pub fn guaranteed_mbps(&self) -> u64 {
        self.guarantee.map_or(0, Rate::mbps)
    }
}

pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pods_without_our_keys_are_not_ours() {
        let a = ann(&[
            ("io.kubernetes.pod.name", "x"),
            ("rdma.other.io/bandwidth", "junk"),
        ]);
        assert_eq!(Request::from_annotations(&a).unwrap(), None);
    }

    #[test]
    fn full_request() {
        let a = ann(&[
            (KEY_BANDWIDTH, "10Gbps"),
            (KEY_LIMIT, "25 G"),
            (KEY_POOL, "fabric-a"),
            (KEY_CONTAINERS, "trainer, sidecar"),
            (KEY_HCA_HANDLES, "16"),
            (KEY_HCA_OBJECTS, "4096"),
        ]);
        let r = Request::from_annotations(&a).unwrap().unwrap();
        assert_eq!(r.guaranteed_mbps(), 10_000);
        assert_eq!(r.limit.unwrap().mbps(), 25_000);
        assert_eq!(r.pool.as_deref(), Some("fabric-a"));
        assert!(r.applies_to("trainer") && r.applies_to("sidecar") && !r.applies_to("logger"));
        assert_eq!((r.hca_handles, r.hca_objects), (Some(16), Some(4096)));
    }

    #[test]
    fn refusals_name_key_value_and_form() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (
                &[(KEY_BANDWIDTH, "10Gi")],
                KEY_BANDWIDTH,
                "Kbps|Mbps|Gbps|Tbps",
            ),
            (&[(KEY_BANDWIDTH, "")], KEY_BANDWIDTH, "Kbps|Mbps|Gbps|Tbps"),
            (
                &[(KEY_BANDWIDTH, "-1G")],
                KEY_BANDWIDTH,
                "Kbps|Mbps|Gbps|Tbps",
            ),
            (
                &[(KEY_BANDWIDTH, "10G"), (KEY_LIMIT, "5G")],
                KEY_LIMIT,
                "at least the guarantee",
            ),
            (&[(KEY_POOL, "Fabric_A")], KEY_POOL, "DNS label"),
            (
                &[(KEY_CONTAINERS, "a,,b")],
                KEY_CONTAINERS,
                "comma-separated",
            ),
            (&[(KEY_HCA_HANDLES, "0")], KEY_HCA_HANDLES, "whole number"),
            (
                &[(KEY_HCA_OBJECTS, "lots")],
                KEY_HCA_OBJECTS,
                "whole number",
            ),
            (
                &[("rdma.conrdma.io/bandwith", "10G")],
                "rdma.conrdma.io/bandwith",
                "rdma.conrdma.io/bandwidth",
            ),
            (
                &[(KEY_ALLOCATION, "{}")],
                KEY_ALLOCATION,
                "cannot be requested",
            ),
        ];
        for (pairs, key, form) in cases {
            let err = Request::from_annotations(&ann(pairs))
                .expect_err(key)
                .to_string();
            assert!(err.contains(key), "{err}");
            assert!(err.contains(form), "{err}");
            assert!(!err.contains('\n'), "{err}");
            if let Some((_, v)) = pairs.iter().find(|(k, _)| k == key) {
                if !key.ends_with("bandwith") {
                    assert!(err.contains(&format!("{v:?}")), "{err}");
                }
            }
        }
    }

    #[test]
    fn limit_alone_and_pool_alone_are_requests() {
        let r = Request::from_annotations(&ann(&[(KEY_LIMIT, "5G")]))
            .unwrap()
            .unwrap();
        assert_eq!((r.guarantee, r.limit.map(Rate::mbps)), (None, Some(5_000)));
        let r = Request::from_annotations(&ann(&[(KEY_POOL, "p")]))
            .unwrap()
            .unwrap();
        assert_eq!(r.guaranteed_mbps(), 0);
        assert!(r.applies_to("anything"));
    }
}
