//! Turns an allocation into the OCI adjustment containerd applies to a container: the VF's uverbs
//! node and rdma_cm (containerd adds their device-cgroup allow rules), the env vars a workload reads,
//! the allocation annotation, and `rdma.max` where the host can take it.

use conrdma_api::allocation::{AllocationRecord, RdmaCgroupLimit};
use conrdma_api::request::{Request, KEY_ALLOCATION};
use conrdma_node::discovery::CharDev;
use conrdma_node::NodeConfig;
use conrdma_nri::{
    ContainerAdjustment, KeyValue, LinuxContainerAdjustment, LinuxDevice, LinuxResources,
    OptionalFileMode,
};

use crate::cgroup::RdmaCgroup;

/// Decides the pod's `rdma.max` value, or says why there is none, once at admission.
pub fn rdma_cgroup_decision(
    host: RdmaCgroup,
    req: &Request,
    cfg: &NodeConfig,
    rdma_device: &str,
) -> RdmaCgroupLimit {
    let not_set = |reason: String| RdmaCgroupLimit::NotSet { reason };
    let handles = req.hca_handles.or(cfg.rdma_cgroup.hca_handles);
    let objects = req.hca_objects.or(cfg.rdma_cgroup.hca_objects);
    if handles.is_none() && objects.is_none() {
        return not_set("no hca-handles/hca-objects asked and no node default".into());
    }
    let show = |v: Option<u32>| v.map_or("max".to_string(), |n| n.to_string());
    let value = format!(
        "{rdma_device} hca_handle={} hca_object={}",
        show(handles),
        show(objects)
    );
    match host {
        RdmaCgroup::Available => RdmaCgroupLimit::Set { max: value },
        RdmaCgroup::NoController => not_set(format!(
            "cgroup v2 host without the rdma controller (wanted {value})"
        )),
        RdmaCgroup::V1 => not_set(format!(
            "cgroup v1 host, where runc refuses unified keys (wanted {value})"
        )),
    }
}

/// The adjustment for one container of an admitted pod.
pub fn adjustment(
    rec: &AllocationRecord,
    uverbs: &CharDev,
    rdma_cm: Option<&CharDev>,
) -> ContainerAdjustment {
    let mut adj = ContainerAdjustment::new();
    adj.annotations
        .insert(KEY_ALLOCATION.to_string(), rec.to_json());
    for (k, v) in [
        ("CONRDMA_RDMA_DEVICE", rec.rdma_device.clone()),
        ("CONRDMA_NETDEV", rec.netdev.clone()),
        ("CONRDMA_VF_PCI", rec.vf_pci.clone()),
        ("CONRDMA_GUARANTEED_MBPS", rec.guaranteed_mbps.to_string()),
        ("CONRDMA_LIMIT_MBPS", rec.limit_mbps.to_string()),
    ]
    .into_iter()
    .chain(
        [
            ("CONRDMA_ADDRESS", rec.address.clone()),
            ("CONRDMA_IFNAME", rec.ifname.clone()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v))),
    ) {
        let mut kv = KeyValue::new();
        kv.key = k.to_string();
        kv.value = v;
        adj.env.push(kv);
    }
    let mut linux = LinuxContainerAdjustment::new();
    linux.devices.push(char_device(uverbs));
    if let Some(cm) = rdma_cm {
        linux.devices.push(char_device(cm));
    }
    if let Some(max) = rec.rdma_cgroup.max() {
        let mut res = LinuxResources::new();
        res.unified.insert("rdma.max".to_string(), max.to_string());
        linux.resources = Some(res).into();
    }
    adj.linux = Some(linux).into();
    adj
}

fn char_device(dev: &CharDev) -> LinuxDevice {
    let mut d = LinuxDevice::new();
    d.path = dev.dev_path();
    d.type_ = "c".to_string();
    d.major = dev.major;
    d.minor = dev.minor;
    // Verbs are opened by unprivileged users inside the container, as on the host (udev: 0666).
    let mut mode = OptionalFileMode::new();
    mode.value = 0o666;
    d.file_mode = Some(mode).into();
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use conrdma_api::request::annotations;

    fn req(pairs: &[(&str, &str)]) -> Request {
        Request::from_annotations(&annotations(pairs))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn rdma_max_only_where_the_host_takes_it() {
        let cfg = NodeConfig::default();
        let r = req(&[("hca-handles", "16")]);
        assert_eq!(
            rdma_cgroup_decision(RdmaCgroup::Available, &r, &cfg, "mlx5_3").max(),
            Some("mlx5_3 hca_handle=16 hca_object=max")
        );
        let v1 = rdma_cgroup_decision(RdmaCgroup::V1, &r, &cfg, "mlx5_3");
        assert!(
            matches!(&v1, RdmaCgroupLimit::NotSet { reason } if reason.contains("cgroup v1")),
            "{v1:?}"
        );
        let none = rdma_cgroup_decision(
            RdmaCgroup::Available,
            &req(&[("bandwidth", "1G")]),
            &cfg,
            "mlx5_3",
        );
        assert_eq!(none.max(), None);
        let cfg = NodeConfig::from_toml("[rdma_cgroup]\nhca_handles = 4\nhca_objects = 100", "t")
            .unwrap();
        let r = req(&[("hca-objects", "7")]);
        assert_eq!(
            rdma_cgroup_decision(RdmaCgroup::Available, &r, &cfg, "rxe0").max(),
            Some("rxe0 hca_handle=4 hca_object=7")
        );
    }

    #[test]
    fn adjustment_carries_devices_env_annotation_and_limits() {
        let rec = AllocationRecord {
            pool: "p".into(),
            pf: "ens1f0".into(),
            vf: 3,
            vf_pci: "0000:3b:00.4".into(),
            rdma_device: "mlx5_5".into(),
            netdev: "ens1f0v3".into(),
            guaranteed_mbps: 10_000,
            limit_mbps: 25_000,
            uverbs: "/dev/infiniband/uverbs5".into(),
            rdma_cgroup: RdmaCgroupLimit::Set {
                max: "mlx5_5 hca_handle=2 hca_object=max".into(),
            },
            start_max_mbps: None,
            address: None,
            ifname: None,
        };
        let uv = CharDev {
            name: "uverbs5".into(),
            major: 231,
            minor: 197,
        };
        let cm = CharDev {
            name: "rdma_cm".into(),
            major: 10,
            minor: 58,
        };
        let adj = adjustment(&rec, &uv, Some(&cm));
        let back = AllocationRecord::from_json(&adj.annotations[KEY_ALLOCATION]).unwrap();
        assert_eq!(back, rec);
        let env: Vec<String> = adj
            .env
            .iter()
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect();
        assert!(
            env.contains(&"CONRDMA_LIMIT_MBPS=25000".to_string()),
            "{env:?}"
        );
        let devs = &adj.linux.devices;
        assert_eq!(
            (
                devs[0].path.as_str(),
                devs[0].type_.as_str(),
                devs[0].major,
                devs[0].minor
            ),
            ("/dev/infiniband/uverbs5", "c", 231, 197)
        );
        assert_eq!(devs[1].path, "/dev/infiniband/rdma_cm");
        assert_eq!(
            adj.linux.resources.unified["rdma.max"],
            "mlx5_5 hca_handle=2 hca_object=max"
        );

        let mut v1 = rec.clone();
        v1.rdma_cgroup = RdmaCgroupLimit::NotSet {
            reason: "cgroup v1 host".into(),
        };
        assert!(
            adjustment(&v1, &uv, None).linux.resources.is_none(),
            "no unified keys on v1"
        );
    }
}
