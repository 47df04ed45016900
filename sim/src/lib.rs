//! ConRDMA simulators: research tools, kept out of the node tool and the webhook.
//!
//! - [`conserve`]: the work-conserving controller against static rates and the ideal, on one PF
//!   (binary `conrdma-sim`, figures in `docs/conserve.md`);
//! - [`placement`]: one seeded workload scheduled by VF count only and through the placement
//!   webhook's own filter and prioritize (binary `conrdma-placement-sim`, figures in
//!   `docs/placement.md`).
//!
//! Both draw from the one seeded [`rng::Rng`], so a seed gives the same figures on every machine.

pub mod conserve;
pub mod error;
pub mod placement;
pub mod rng;

pub use error::SimError;
pub use rng::Rng;
