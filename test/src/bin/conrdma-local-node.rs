//! The main job: a local ConRDMA node on a simulated SR-IOV NIC. Builds the NIC, starts an isolated
//! containerd with NRI (2.x by default; `--containerd 1.7`, or `$CONRDMA_CONTAINERD`, for 1.7), the
//! ConRDMA NRI plugin and the `conrdma` runtime handler (the shim), runs a demo pod that asks for
//! bandwidth and shows what it got: spec, inside view and the VF's rate. `--hold` keeps the node up
//! for crictl until Ctrl-C.

use std::process::Command;
use std::time::Duration;

use conrdma_e2e::deps::{self, ContainerdLine};
use conrdma_e2e::{shim_dir, shim_runtime, workspace_bin, Containerd, ContainerdOptions, PodSpec};

const USAGE: &str = "usage: conrdma-local-node [--containerd 1.7|2.1] [--hold] [--pfs N] [--vfs N] [--speed RATE] [--bandwidth RATE] [--limit RATE]";

struct Opts {
    hold: bool,
    pfs: String,
    vfs: String,
    speed: String,
    bandwidth: String,
    limit: String,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        hold: false,
        pfs: "2".into(),
        vfs: "8".into(),
        speed: "100Gbps".into(),
        bandwidth: "25Gbps".into(),
        limit: "40Gbps".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .ok_or_else(|| format!("{a} needs a value; {USAGE}"))
        };
        match a.as_str() {
            "--hold" => o.hold = true,
            "--containerd" => {
                let v = val()?;
                let line = ContainerdLine::parse(&v)
                    .ok_or_else(|| format!("--containerd {v:?}: expected 1.7 or 2.1; {USAGE}"))?;
                deps::set_containerd_line(line).map_err(|e| e.to_string())?;
            }
            "--pfs" => o.pfs = val()?,
            "--vfs" => o.vfs = val()?,
            "--speed" => o.speed = val()?,
            "--bandwidth" => o.bandwidth = val()?,
            "--limit" => o.limit = val()?,
            _ => return Err(format!("unknown argument {a:?}; {USAGE}")),
        }
    }
    Ok(o)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conrdma-local-node: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let o = parse()?;
    let work = tempfile::Builder::new()
        .prefix("conrdma-node-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let nic = work.path().join("nic");
    let ctl = workspace_bin("conrdmactl").map_err(|e| e.to_string())?;
    step(&format!(
        "simulated NIC: {} PFs x {} VFs at {}",
        o.pfs, o.vfs, o.speed
    ));
    run_cmd(
        Command::new(&ctl)
            .args([
                "simulate-nic",
                "--pfs",
                &o.pfs,
                "--vfs",
                &o.vfs,
                "--speed",
                &o.speed,
                "--root",
            ])
            .arg(&nic),
    )?;
    let config = work.path().join("node.toml");
    std::fs::write(&config, "admission_ratio = 1.0\n\n[[pool]]\nname = \"fabric-a\"\npfs = [\"ens1f0\", \"ens1f1\"]\n\n[rdma_cgroup]\nhca_handles = 16\nhca_objects = 4096\n")
        .map_err(|e| e.to_string())?;

    let version = deps::containerd_version().map_err(|e| e.to_string())?;
    step(&format!(
        "containerd {} with NRI and the `conrdma` runtime handler (isolated: its own root, state and sockets)\n    {version}",
        deps::try_containerd_line().map_err(|e| e.to_string())?
    ));
    // The ConRDMA shim holds the pod's VF to its rate; on the simulated NIC its limiter writes the
    // VF's rate knobs under the NIC tree.
    let handler = shim_runtime("conrdma", &nic, &work.path().join("runc"));
    let opts = ContainerdOptions {
        runtimes: vec![handler],
        extra_path: vec![shim_dir().map_err(|e| e.to_string())?],
        ..Default::default()
    };
    let mut cd = Containerd::start(opts).await.map_err(|e| e.to_string())?;
    let state = work.path().join("state");
    let plugin = cd
        .start_plugin_on(&nic, &state, &["--config".as_ref(), config.as_os_str()])
        .await
        .map_err(|e| e.to_string())?;
    step(&format!(
        "NRI plugin connected (log: {})",
        plugin.log_path().display()
    ));

    let cri = cd.cri();
    let ann = [
        ("rdma.conrdma.io/bandwidth", o.bandwidth.as_str()),
        ("rdma.conrdma.io/bandwidth-limit", o.limit.as_str()),
    ];
    step(&format!(
        "demo pod asks: rdma.conrdma.io/bandwidth={} bandwidth-limit={}",
        o.bandwidth, o.limit
    ));
    let pod = cri
        .run_pod_spec(&ann.iter().fold(
            PodSpec::new("rdma-demo", "default", "demo-uid").runtime_handler("conrdma"),
            |spec, (k, v)| spec.annotation(k, v),
        ))
        .await
        .map_err(|s| s.message().to_string())?;
    let ctr = match cri
        .run_container(&pod, "trainer", "", &["sleep", "3600"], &[])
        .await
    {
        Ok(c) => c,
        Err(s) => {
            let _ = cri.stop_and_remove_pod(&pod).await;
            return Err(format!("the node refused the pod: {}", s.message()));
        }
    };
    let spec = cri
        .container_status_verbose(&ctr)
        .await
        .map_err(|s| s.message().to_string())?["runtimeSpec"]
        .clone();
    let alloc = spec["annotations"]["rdma.conrdma.io/allocation"]
        .as_str()
        .unwrap_or("(none)");
    step("what it got (annotation rdma.conrdma.io/allocation, as `crictl inspect` shows it):");
    let pretty = serde_json::from_str::<serde_json::Value>(alloc)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or(alloc.to_string());
    println!("{pretty}");
    let record: Option<serde_json::Value> = serde_json::from_str(alloc).ok();
    let vf_knobs = record
        .as_ref()
        .and_then(|r| Some((r["pf"].as_str()?.to_string(), r["vf"].as_u64()?)));
    if let Some((pf, vf)) = &vf_knobs {
        step("the ConRDMA shim holds the VF to it (simulated NIC's per-VF rate knobs):");
        println!(
            "VF {pf} vf {vf} while the pod runs: {}",
            vf_rate(&nic, pf, *vf)
        );
    }
    step("inside the container: ls -l /dev/infiniband; env | grep CONRDMA_");
    let (_, out, _) = cri
        .exec_sync(
            &ctr,
            &[
                "sh",
                "-c",
                "ls -l /dev/infiniband; env | grep CONRDMA_ | sort",
            ],
            Duration::from_secs(10),
        )
        .await
        .map_err(|s| s.message().to_string())?;
    print!("{out}");
    step("a second pod asking more than is left is refused:");
    let big = [("rdma.conrdma.io/bandwidth", "190Gbps")];
    let pod2 = cri
        .run_pod("too-big", "default", "big-uid", &big)
        .await
        .map_err(|s| s.message().to_string())?;
    match cri
        .run_container(&pod2, "main", "", &["sleep", "1"], &[])
        .await
    {
        Ok(_) => println!("(unexpectedly admitted)"),
        Err(s) => println!("{}", s.message()),
    }
    let _ = cri.stop_and_remove_pod(&pod2).await;
    step("node status (conrdmactl status):");
    run_cmd(
        Command::new(&ctl)
            .arg("status")
            .arg("--root")
            .arg(&nic)
            .arg("--state-dir")
            .arg(&state)
            .arg("--config")
            .arg(&config),
    )?;

    if o.hold {
        step(&format!(
            "node is up; try: crictl --runtime-endpoint unix://{} inspect {ctr}   (Ctrl-C to stop)",
            cd.socket().display()
        ));
        let _ = tokio::signal::ctrl_c().await;
    }
    step("removing the demo pod and stopping the node");
    cri.stop_and_remove_pod(&pod)
        .await
        .map_err(|s| s.message().to_string())?;
    if let Some((pf, vf)) = &vf_knobs {
        println!("VF {pf} vf {vf} after removal: {}", vf_rate(&nic, pf, *vf));
    }
    drop(plugin);
    cd.shutdown().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// The VF's rates as the simulated NIC keeps them (where mlx5 exposes them in sysfs).
fn vf_rate(nic: &std::path::Path, pf: &str, vf: u64) -> String {
    let dir = nic.join(format!("sys/class/net/{pf}/device/sriov/{vf}"));
    let read = |k: &str| {
        std::fs::read_to_string(dir.join(k))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| e.to_string())
    };
    format!(
        "min_tx_rate={} Mbps, max_tx_rate={} Mbps (0 = none)",
        read("min_tx_rate"),
        read("max_tx_rate")
    )
}

fn step(msg: &str) {
    println!("\n==> {msg}");
}

fn run_cmd(cmd: &mut Command) -> Result<(), String> {
    let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("{cmd:?} failed: {status}"))
}
