//! `conrdma-sim`: the work-conserving controller against static rates and the ideal (wiring only;
//! the simulator is `conrdma_sim::conserve`).

use std::process::ExitCode;

use clap::Parser;
use conrdma_sim::conserve::{simulate, Args};

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.check() {
        eprintln!("conrdma-sim: {e}");
        return ExitCode::FAILURE;
    }
    print!("{}", simulate(&args).render(&args));
    ExitCode::SUCCESS
}
