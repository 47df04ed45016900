//! Real netdevs standing in for VF netdevs, for hosts without an SR-IOV NIC: one veth per VF,
//! named as the simulated NIC names that VF, its peer on a bridge in a private "fabric" network
//! namespace, so pods holding two of them reach each other through the bridge. Deleting the
//! fabric namespace (on drop) destroys every pair, wherever its VF end is by then.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

pub struct Fabric {
    ns: String,
    vfs: Vec<String>,
}

fn ip(args: &[&str]) -> std::io::Result<Output> {
    Command::new("ip").args(args).output()
}

fn ip_ok(args: &[&str]) -> Result<()> {
    let out = ip(args).map_err(|e| Error::io("running ip (iproute2)", e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Command {
        command: format!("ip {}", args.join(" ")),
        status: out.status.to_string(),
        output: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Whether the calling thread's network namespace has a netdev named `name`.
pub fn host_has(name: &str) -> bool {
    ip(&["link", "show", name]).is_ok_and(|o| o.status.success())
}

impl Fabric {
    /// Creates a stand-in named after each of `vfs`; refuses if the host already has one of
    /// those names (after giving a previous fabric's teardown, which the kernel finishes
    /// asynchronously, time to end).
    pub fn new(vfs: &[&str]) -> Result<Fabric> {
        wait_gone(vfs);
        if let Some(vf) = vfs.iter().find(|v| host_has(v)) {
            return Err(Error::Environment(format!(
                "the host already has a netdev named {vf}, which a stand-in VF needs; remove it"
            )));
        }
        let f = Fabric {
            ns: format!(
                "crdfab-{}-{}",
                std::process::id(),
                vfs.first().copied().unwrap_or("")
            ),
            vfs: vfs.iter().map(|s| s.to_string()).collect(),
        };
        ip_ok(&["netns", "add", &f.ns])?;
        ip_ok(&["-n", &f.ns, "link", "add", "br0", "type", "bridge"])?;
        ip_ok(&["-n", &f.ns, "link", "set", "br0", "up"])?;
        for (i, vf) in vfs.iter().enumerate() {
            let peer = format!("p{i}");
            ip_ok(&[
                "link", "add", vf, "type", "veth", "peer", "name", &peer, "netns", &f.ns,
            ])?;
            ip_ok(&["-n", &f.ns, "link", "set", &peer, "master", "br0", "up"])?;
        }
        Ok(f)
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.ns]);
        let names: Vec<&str> = self.vfs.iter().map(String::as_str).collect();
        wait_gone(&names);
    }
}

/// Waits (up to 10 s) until none of `vfs` is left on the host.
fn wait_gone(vfs: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while vfs.iter().any(|v| host_has(v)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}
