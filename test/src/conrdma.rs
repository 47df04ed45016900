//! The project's own pieces, as tests and benches start them: a simulated NIC built by
//! `conrdmactl`, and the NRI plugin run as an external plugin against a [`Containerd`].

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::containerd::Containerd;
use crate::deps::workspace_bin;
use crate::error::{Error, Result};
use crate::process::ChildGuard;

/// Name under which the NRI plugin registers (its default `--idx` and `--name`).
pub const NRI_PLUGIN: &str = "10-conrdma";

/// Writes a simulated SR-IOV NIC under `root` (which must not exist yet or be empty).
pub fn simulate_nic(root: &Path, pfs: u32, vfs: u32, speed: &str) -> Result<()> {
    let mut cmd = Command::new(workspace_bin("conrdmactl")?);
    cmd.args([
        "simulate-nic",
        "--pfs",
        &pfs.to_string(),
        "--vfs",
        &vfs.to_string(),
        "--speed",
        speed,
        "--root",
    ])
    .arg(root);
    let out = cmd.output().map_err(|e| Error::Io {
        context: format!("running {cmd:?}"),
        source: e,
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("{cmd:?}"),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

impl Containerd {
    /// Starts `conrdma-nri-plugin --socket <this NRI socket> ARGS...` (log in `<dir>/nri-plugin.log`)
    /// and waits until containerd has registered and synchronized it.
    pub async fn start_nri_plugin<I, S>(&mut self, args: I) -> Result<ChildGuard>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mark = self.log_mark();
        let mut cmd = Command::new(workspace_bin("conrdma-nri-plugin")?);
        cmd.arg("--socket").arg(self.nri_socket()).args(args);
        let plugin = self.spawn_process("nri-plugin", &mut cmd)?;
        self.wait_for_plugin_since(mark, NRI_PLUGIN, Duration::from_secs(20))
            .await?;
        Ok(plugin)
    }
}
