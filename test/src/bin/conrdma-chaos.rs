//! Chaos soak: pods under the ConRDMA runtime come and go on a local node (real containerd, the
//! NRI plugin, the shim, a simulated SR-IOV NIC) while kill -9 lands at random points on the
//! plugin (restarted at once), a pod's shim, or containerd (restarted at once), including in the
//! middle of a CreateContainer or a pod removal.
//!
//! After every step: no VF booked twice, no PF guaranteed beyond its line rate and no address
//! booked twice (all counted as double bookings). At the end, once every pod is removed through
//! CRI: the ledger is empty, every VF rate is reset, and no shim process or mount of the instance
//! is left (counted as leaks).
//!
//! With `--pod-network`, half the pods have their own network namespace (a CNI bridge) in a pool
//! whose VFs move into the pod with an address (veth stand-ins for the VF netdevs, as in
//! test/tests/pod_network.rs; fewer addresses than VFs, so the range runs out too). At the end
//! every stand-in must be home: its own name, down, no address, and no `rdma0` left on the host
//! (counted as netdevs astray). A stand-in deleted with a pod's namespace (containerd removed the
//! pod while the plugin could not bring the netdev home) is reported, not counted: a veth dies
//! with its namespace where a real VF returns to the host, which the plugin then renames home.
//!
//!   conrdma-chaos --cycles N --seed S [--containerd 1.7|2.1] [--pod-network]
//!
//! Last line: `chaos: C cycles, F faults, leaked L, rates not reset R, double bookings D, netdevs
//! astray A`; exit status 1 unless L, R, D and A are 0.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use conrdma_e2e::containerd::{mounts_under, shim_pids};
use conrdma_e2e::deps::{self, ContainerdLine};
use conrdma_e2e::standin::{self, Fabric};
use conrdma_e2e::{
    shim_dir, shim_runtime, simulate_nic, ChildGuard, CniBridge, Containerd, ContainerdOptions,
    PodSpec, NRI_PLUGIN,
};
use conrdma_node::discovery::discover;
use conrdma_node::ledger::{Ledger, SANDBOX_LISTING_GRACE};
use conrdma_node::limiter::{RateLimiter, SimulatedLimiter, VfRate};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BW: &str = "rdma.conrdma.io/bandwidth";
/// Line rate of each simulated PF, in Mbps.
const LINE_MBPS: u64 = 100_000;

#[derive(Parser)]
#[command(about = "kill -9 chaos soak of a local ConRDMA node")]
struct Args {
    /// Steps to run (each: a pod created, a pod removed, or a fault).
    #[arg(long, default_value_t = 50)]
    cycles: u32,
    /// RNG seed: the same seed gives the same sequence of steps.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// containerd line (default: $CONRDMA_CONTAINERD, else 2.1).
    #[arg(long)]
    containerd: Option<String>,
    #[arg(long, default_value_t = 2)]
    pfs: u32,
    #[arg(long, default_value_t = 8)]
    vfs: u32,
    /// The plugin's ledger sweep period (`cri.sweep_seconds`); 0 turns the sweep off, to see what
    /// NRI events alone leave behind.
    #[arg(long, default_value_t = 2)]
    sweep_seconds: u64,
    /// Half the pods in their own network namespace, their VF moved in with an address.
    #[arg(long)]
    pod_network: bool,
}

/// The pool whose VFs move into pods (the first PF), and its addresses: fewer than its VFs.
const NET_POOL: &str = "[[pool]]\nname = \"fabric\"\npfs = [\"ens1f0\"]\n[pool.network]\nsubnet = \"10.77.0.0/24\"\nrange = \"10.77.0.10-10.77.0.15\"\n";

#[derive(Debug, Clone, Copy)]
enum Fault {
    Plugin,
    Shim,
    Containerd,
}

struct Node {
    cd: Containerd,
    plugin: Option<ChildGuard>,
    nic: PathBuf,
    state: PathBuf,
    config: PathBuf,
}

impl Node {
    async fn start_plugin(&mut self) -> Result<(), String> {
        let args = [
            "--root".as_ref(),
            self.nic.as_os_str(),
            "--state-dir".as_ref(),
            self.state.as_os_str(),
            "--config".as_ref(),
            self.config.as_os_str(),
        ];
        self.plugin = Some(
            self.cd
                .start_nri_plugin(args)
                .await
                .map_err(|e| e.to_string())?,
        );
        Ok(())
    }

    fn proxies(&self) -> Vec<i32> {
        let addr = self.cd.paths().grpc_socket.to_string_lossy().into_owned();
        shim_pids(&addr)
    }

    /// Runs one step; with `fault`, that fault lands `delay` into it.
    async fn step<T>(
        &mut self,
        step: impl std::future::Future<Output = T>,
        fault: Option<(Fault, Duration)>,
        rng: &mut StdRng,
    ) -> Result<T, String> {
        let Some((fault, delay)) = fault else {
            return Ok(step.await);
        };
        let (out, injected) = tokio::join!(step, async {
            tokio::time::sleep(delay).await;
            self.inject(fault, rng).await
        });
        injected?;
        Ok(out)
    }

    /// kill -9 of one component; containerd and the plugin are restarted at once, as a
    /// supervisor would.
    async fn inject(&mut self, fault: Fault, rng: &mut StdRng) -> Result<(), String> {
        match fault {
            Fault::Plugin => {
                if let Some(mut p) = self.plugin.take() {
                    let _ = p.kill();
                }
                self.start_plugin().await
            }
            Fault::Shim => {
                let pids = self.proxies();
                if !pids.is_empty() {
                    let pid = pids[rng.random_range(0..pids.len())];
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                Ok(())
            }
            Fault::Containerd => {
                let mark = self.cd.log_mark();
                self.cd.kill().map_err(|e| e.to_string())?;
                self.cd.start_again().await.map_err(|e| e.to_string())?;
                if self
                    .cd
                    .wait_for_plugin_since(mark, NRI_PLUGIN, Duration::from_secs(20))
                    .await
                    .is_err()
                {
                    // The plugin gave up or died meanwhile: start a fresh one.
                    if let Some(mut p) = self.plugin.take() {
                        let _ = p.kill();
                    }
                    self.start_plugin().await?;
                }
                Ok(())
            }
        }
    }
}

/// Double bookings in the ledger: a VF held by two pods, or a PF guaranteed beyond its line.
fn double_bookings(state: &Path) -> (usize, Vec<String>) {
    let held = match Ledger::snapshot(state) {
        Ok(h) => h,
        Err(e) => return (1, vec![format!("ledger unreadable: {e}")]),
    };
    let mut by_vf: HashMap<(String, u32), Vec<String>> = HashMap::new();
    let mut by_pf: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_addr: HashMap<(String, String), Vec<String>> = HashMap::new();
    for h in &held {
        if let Some(a) = &h.record.address {
            by_addr
                .entry((h.record.pool.clone(), a.clone()))
                .or_default()
                .push(h.pod.name.clone());
        }
        by_vf
            .entry((h.record.pf.clone(), h.record.vf))
            .or_default()
            .push(h.pod.name.clone());
        *by_pf.entry(h.record.pf.clone()).or_default() += h.record.guaranteed_mbps;
    }
    let mut problems: Vec<String> = by_vf
        .iter()
        .filter(|(_, pods)| pods.len() > 1)
        .map(|((pf, vf), pods)| format!("{pf} VF {vf} booked to {pods:?}"))
        .collect();
    problems.extend(
        by_addr
            .iter()
            .filter(|(_, pods)| pods.len() > 1)
            .map(|((pool, a), pods)| format!("address {a} of pool {pool} booked to {pods:?}")),
    );
    problems.extend(
        by_pf
            .iter()
            .filter(|(_, g)| **g > LINE_MBPS)
            .map(|(pf, g)| format!("{pf} guarantees {g} Mbps of {LINE_MBPS}")),
    );
    (problems.len(), problems)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("conrdma-chaos: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<bool, String> {
    if let Some(v) = &args.containerd {
        let line = ContainerdLine::parse(v)
            .ok_or_else(|| format!("--containerd {v:?}: expected 1.7 or 2.1"))?;
        deps::set_containerd_line(line).map_err(|e| e.to_string())?;
    }
    let work = tempfile::Builder::new()
        .prefix("conrdma-chaos-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let nic = work.path().join("nic");
    simulate_nic(&nic, args.pfs, args.vfs, "100Gbps").map_err(|e| e.to_string())?;
    let config = work.path().join("node.toml");
    let pool = if args.pod_network { NET_POOL } else { "" };
    std::fs::write(
        &config,
        format!("{pool}[cri]\nsweep_seconds = {}\n", args.sweep_seconds),
    )
    .map_err(|e| e.to_string())?;
    // Stand-ins for the first PF's VF netdevs, named as the simulated NIC names them.
    let stand_ins: Vec<String> = (0..args.vfs).map(|v| format!("ens1f0v{v}")).collect();
    let _fabric = match args.pod_network {
        true => {
            let names: Vec<&str> = stand_ins.iter().map(String::as_str).collect();
            Some(Fabric::new(&names).map_err(|e| e.to_string())?)
        }
        false => None,
    };
    let opts = ContainerdOptions {
        runtimes: vec![shim_runtime("conrdma", &nic, &work.path().join("runc"))],
        extra_path: vec![shim_dir().map_err(|e| e.to_string())?],
        cni_bridge: args.pod_network.then(|| CniBridge {
            bridge: "crdbrchaos".into(),
            subnet: "10.88.251.0/24".into(),
        }),
        ..Default::default()
    };
    let cd = Containerd::start(opts).await.map_err(|e| e.to_string())?;
    println!(
        "chaos: containerd {}, {} PFs x {} VFs, seed {}",
        cd.version().map_err(|e| e.to_string())?,
        args.pfs,
        args.vfs,
        args.seed
    );
    let mut node = Node {
        cd,
        plugin: None,
        nic: nic.clone(),
        state: work.path().join("state"),
        config,
    };
    node.start_plugin().await?;

    let mut rng = StdRng::seed_from_u64(args.seed);
    let (mut faults, mut doubles) = (0u32, 0usize);
    let mut pods: Vec<String> = Vec::new();
    let started = Instant::now();
    for cycle in 0..args.cycles {
        let fault = match rng.random_range(0..3) {
            0 => Fault::Plugin,
            1 => Fault::Shim,
            _ => Fault::Containerd,
        };
        // Whether the fault lands in the middle of the step, and when.
        let mid = rng.random_bool(0.3);
        let delay = Duration::from_millis(rng.random_range(0..60));
        let cri = node.cd.cri();
        let roll = rng.random_range(0..100);
        if roll < 50 || pods.is_empty() {
            let gbps = [1, 5, 10, 20, 40][rng.random_range(0..5)];
            let name = format!("p{cycle}");
            let mut spec = PodSpec::new(&name, "chaos", &format!("uid-{name}"))
                .runtime_handler("conrdma")
                .annotation(BW, &format!("{gbps}Gbps"));
            if args.pod_network && rng.random_bool(0.5) {
                spec = spec
                    .own_netns()
                    .annotation("rdma.conrdma.io/pool", "fabric");
            }
            let create = async {
                let pod = cri.run_pod_spec(&spec).await.ok()?;
                let ok = cri
                    .run_container(&pod, "main", "", &["sleep", "3600"], &[])
                    .await
                    .is_ok();
                Some((pod, ok))
            };
            faults += u32::from(mid);
            match node
                .step(create, mid.then_some((fault, delay)), &mut rng)
                .await?
            {
                Some((pod, true)) => pods.push(pod),
                // Refused or broken by the fault: the kubelet removes the pod.
                Some((pod, false)) => {
                    let removed = node.cd.cri().stop_and_remove_pod(&pod).await.is_ok();
                    if !removed {
                        pods.push(pod);
                    }
                }
                None => {}
            }
        } else if roll < 85 {
            let pod = pods.swap_remove(rng.random_range(0..pods.len()));
            let remove = cri.stop_and_remove_pod(&pod);
            faults += u32::from(mid);
            let removed = node
                .step(remove, mid.then_some((fault, delay)), &mut rng)
                .await?
                .is_ok();
            if !removed {
                // Tried again later, as the kubelet would.
                pods.push(pod);
            }
        } else {
            faults += 1;
            node.inject(fault, &mut rng).await?;
        }
        let (n, problems) = double_bookings(&node.state);
        for p in &problems {
            println!("chaos: cycle {cycle}: {p}");
        }
        doubles += n;
    }

    // The end: every pod removed through CRI, retried while faults settle.
    let cri = node.cd.cri();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = cri.list_pods().await.map(|p| p.len()).unwrap_or(usize::MAX);
        if left == 0 || Instant::now() > deadline {
            break;
        }
        let _ = cri.remove_everything().await;
    }
    // Removals NRI did not relay are freed by the plugin's sweep within its period; a pod
    // admitted at RunPodSandbox whose sandbox never made it into containerd's list is left alone
    // for SANDBOX_LISTING_GRACE first.
    let mut wait = Duration::from_secs(3 * args.sweep_seconds + 5);
    if args.pod_network {
        wait = wait.max(SANDBOX_LISTING_GRACE + Duration::from_secs(args.sweep_seconds + 5));
    }
    let deadline = Instant::now() + wait;
    let mut held = Ledger::snapshot(&node.state).map_err(|e| e.to_string())?;
    while !held.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        held = Ledger::snapshot(&node.state).map_err(|e| e.to_string())?;
    }
    for h in &held {
        println!(
            "chaos: leaked allocation of pod {} ({} VF {}, {} Mbps)",
            h.pod.name, h.record.pf, h.record.vf, h.record.guaranteed_mbps
        );
    }
    // containerd finishes some cleanup (a dead shim's `delete`, bundle removal) after CRI returns.
    let deadline = Instant::now() + Duration::from_secs(15);
    while (!node.proxies().is_empty() || !mounts_under(node.cd.dir()).is_empty())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let shims = node.proxies();
    if !shims.is_empty() {
        println!("chaos: shim processes left: {shims:?}");
    }
    let mounts = mounts_under(node.cd.dir());
    for m in &mounts {
        println!("chaos: mount left: {}", m.display());
    }
    let limiter = SimulatedLimiter::new(&nic);
    let inventory = discover(&nic).map_err(|e| e.to_string())?;
    let mut not_reset = 0;
    for pf in &inventory.pfs {
        for vf in &pf.vfs {
            let rate = limiter
                .get(&pf.netdev, vf.index)
                .unwrap_or(VfRate::new(0, 1));
            if rate != VfRate::NONE {
                println!(
                    "chaos: {} VF {} still limited: {rate:?}",
                    pf.netdev, vf.index
                );
                not_reset += 1;
            }
        }
    }
    let (astray, destroyed) = if args.pod_network {
        netdevs_astray(&stand_ins)
    } else {
        (0, 0)
    };
    if destroyed > 0 {
        println!("chaos: {destroyed} stand-in netdev(s) deleted with a pod's namespace (a real VF returns to the host)");
    }
    let leaked = held.len() + shims.len() + mounts.len();
    println!(
        "chaos: {} s on {}",
        started.elapsed().as_secs(),
        deps::try_containerd_line()
            .map(|l| l.to_string())
            .unwrap_or_default()
    );
    if let Some(mut p) = node.plugin.take() {
        let _ = p.kill();
    }
    let _ = node.cd.shutdown().await;
    println!(
        "chaos: {} cycles, {faults} faults, leaked {leaked}, rates not reset {not_reset}, double bookings {doubles}, netdevs astray {astray}",
        args.cycles
    );
    Ok(leaked == 0 && not_reset == 0 && doubles == 0 && astray == 0)
}

/// (netdevs not home, stand-ins deleted): a stand-in on the host must be down without an IPv4
/// address, and no `rdma0` may be left on the host.
fn netdevs_astray(stand_ins: &[String]) -> (usize, usize) {
    let (mut astray, mut destroyed) = (0, 0);
    for name in stand_ins {
        let out = std::process::Command::new("ip")
            .args(["addr", "show", "dev", name])
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                if text.contains("inet ") || text.contains(",UP") {
                    println!("chaos: {name} is not reset: {}", text.replace('\n', " "));
                    astray += 1;
                }
            }
            _ => destroyed += 1,
        }
    }
    if standin::host_has("rdma0") {
        println!("chaos: a netdev named rdma0 is left on the host");
        astray += 1;
    }
    (astray, destroyed)
}
