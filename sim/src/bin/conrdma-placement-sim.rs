//! `conrdma-placement-sim`: prints the placement comparison for a seeded workload (wiring only; the
//! simulator is `conrdma_sim::placement`).

use clap::Parser;
use conrdma_placement::Policy;
use conrdma_sim::placement::{compare, table, SimConfig};

/// Simulate a cluster scheduled by VF count only vs through the ConRDMA placement webhook.
#[derive(Parser)]
#[command(name = "conrdma-placement-sim")]
struct Args {
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 200)]
    nodes: usize,
    #[arg(long, default_value_t = 20_000)]
    pods: usize,
    /// Offered guaranteed bandwidth as a multiple of cluster capacity; repeat for several runs.
    #[arg(long, default_values_t = vec![1.0])]
    load: Vec<f64>,
    #[arg(long, value_enum, default_value = "best-fit")]
    policy: PolicyArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PolicyArg {
    BestFit,
    Spread,
    LeastMeasuredUsage,
}

fn main() {
    let args = Args::parse();
    for load in &args.load {
        let cfg = SimConfig {
            seed: args.seed,
            nodes: args.nodes,
            pods: args.pods,
            load: *load,
            policy: match args.policy {
                PolicyArg::BestFit => Policy::BestFit,
                PolicyArg::Spread => Policy::Spread,
                PolicyArg::LeastMeasuredUsage => Policy::LeastMeasuredUsage,
            },
            ..SimConfig::default()
        };
        let (a, b, ratio) = compare(&cfg);
        println!("{}", table(&cfg, &a, &b, ratio));
    }
}
