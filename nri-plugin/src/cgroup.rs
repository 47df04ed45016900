//! Can this host take `rdma.max` through the OCI unified map? Only cgroup v2 with the rdma
//! controller: runc refuses every unified key on cgroup v1, so sending one would make the container
//! fail to start.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RdmaCgroup {
    /// cgroup v2 with `rdma` among the root's controllers.
    Available,
    /// cgroup v2, but the kernel has no rdma controller.
    NoController,
    /// cgroup v1 (or hybrid): unified keys are refused by runc.
    V1,
}

impl RdmaCgroup {
    /// Reads `<root>/cgroup.controllers`, which exists only where `root` is a cgroup v2 mount.
    pub fn detect(root: &Path) -> RdmaCgroup {
        match std::fs::read_to_string(root.join("cgroup.controllers")) {
            Ok(list) if list.split_whitespace().any(|c| c == "rdma") => RdmaCgroup::Available,
            Ok(_) => RdmaCgroup::NoController,
            Err(_) => RdmaCgroup::V1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_host_kind_from_real_files() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(RdmaCgroup::detect(d.path()), RdmaCgroup::V1);
        std::fs::write(
            d.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        assert_eq!(RdmaCgroup::detect(d.path()), RdmaCgroup::NoController);
        std::fs::write(
            d.path().join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        )
        .unwrap();
        assert_eq!(RdmaCgroup::detect(d.path()), RdmaCgroup::Available);
    }
}
