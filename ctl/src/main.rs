//! `conrdmactl`: build a simulated SR-IOV NIC, show what discovery sees, show what the ledger holds.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use conrdma_api::rate::{format_mbps, Rate};
use conrdma_node::discovery::discover;
use conrdma_node::ledger::Ledger;
use conrdma_node::simulate::{build, Binding, SimOptions};
use conrdma_node::{Inventory, NodeConfig, NodeError};

#[derive(Parser)]
#[command(version, about = "ConRDMA node tool")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum BindingArg {
    /// RDMA device under the VF's PCI function (mlx5).
    Pci,
    /// RDMA device bound to the VF netdev (Soft-RoCE/rxe).
    Netdev,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a simulated SR-IOV RDMA NIC (sysfs + /dev) under an empty directory.
    SimulateNic {
        #[arg(long)]
        root: PathBuf,
        #[arg(long, default_value_t = 2)]
        pfs: u32,
        #[arg(long, default_value_t = 8)]
        vfs: u32,
        #[arg(long, default_value = "100Gbps", value_parser = parse_rate)]
        speed: Rate,
        #[arg(long, value_enum, default_value = "pci")]
        binding: BindingArg,
        /// Create real character device nodes (needs root).
        #[arg(long)]
        mknod: bool,
    },
    /// Print what discovery finds and what the node offers, as JSON.
    Discover {
        #[arg(long, default_value = "/")]
        root: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print per-pool usage and every held allocation.
    Status {
        #[arg(long, default_value = "/")]
        root: PathBuf,
        #[arg(long, default_value = "/run/conrdma/nri")]
        state_dir: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    Rate::parse(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("warn")
        .init();
    match run(Cli::parse().cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conrdmactl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum CtlError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("encoding the discovery result: {0}")]
    Json(#[from] serde_json::Error),
}

fn load(config: Option<&PathBuf>) -> Result<NodeConfig, NodeError> {
    config.map_or(Ok(NodeConfig::default()), |p| NodeConfig::load(p))
}

fn run(cmd: Cmd) -> Result<(), CtlError> {
    match cmd {
        Cmd::SimulateNic {
            root,
            pfs,
            vfs,
            speed,
            binding,
            mknod,
        } => {
            let binding = match binding {
                BindingArg::Pci => Binding::Pci,
                BindingArg::Netdev => Binding::Netdev,
            };
            build(
                &root,
                &SimOptions {
                    pfs,
                    vfs_per_pf: vfs,
                    speed,
                    binding,
                    mknod,
                },
            )?;
            println!(
                "simulated {pfs} PF(s) x {vfs} VF(s) at {speed} under {}",
                root.display()
            );
        }
        Cmd::Discover { root, config } => {
            let node = discover(&root)?;
            let inv = Inventory::build(&node, &load(config.as_ref())?);
            let out = serde_json::json!({ "node": node, "offered": inv });
            let text = serde_json::to_string_pretty(&out)?;
            // Ignore a closed pipe (`| head`): nothing is left to tell the reader.
            let _ = writeln!(std::io::stdout(), "{text}");
        }
        Cmd::Status {
            root,
            state_dir,
            config,
        } => {
            let inv = Inventory::build(&discover(&root)?, &load(config.as_ref())?);
            let held = Ledger::snapshot(&state_dir)?;
            println!(
                "{:<12} {:>10} {:>11} {:>5} {:>9}",
                "POOL", "CAPACITY", "GUARANTEED", "PODS", "FREE VFS"
            );
            let records = held.iter().map(|h| &h.record);
            for pool in conrdma_node::report::pool_reports(&inv, records) {
                println!(
                    "{:<12} {:>10} {:>11} {:>5} {:>9}",
                    pool.pool,
                    format_mbps(pool.capacity_mbps),
                    format_mbps(pool.guaranteed_mbps),
                    pool.pods,
                    pool.vfs_free,
                );
            }
            println!();
            println!(
                "{:<28} {:<8} {:<7} {:<4} {:<10} {:>10} {:>10}",
                "POD", "POOL", "PF", "VF", "RDMA", "GUARANTEE", "LIMIT"
            );
            for h in &held {
                let r = &h.record;
                println!(
                    "{:<28} {:<8} {:<7} {:<4} {:<10} {:>10} {:>10}",
                    format!("{}/{}", h.pod.namespace, h.pod.name),
                    r.pool,
                    r.pf,
                    r.vf,
                    r.rdma_device,
                    format_mbps(r.guaranteed_mbps),
                    format_mbps(r.limit_mbps)
                );
            }
        }
    }
    Ok(())
}
