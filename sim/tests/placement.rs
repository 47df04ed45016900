//! Issue goal 6 on a fixed seed: through the webhook, at least 1.3x the pods of VF-count-only
//! scheduling get the bandwidth they asked for, and no PF is ever over-committed.

use conrdma_sim::placement::{compare, simulate, table, Mode, SimConfig};

#[test]
fn webhook_places_at_least_1_3x_the_pods_with_bandwidth_met_and_never_overcommits() {
    let cfg = SimConfig {
        seed: 42,
        nodes: 200,
        pods: 6000,
        load: 1.0,
        ..SimConfig::default()
    };
    let (a, b, ratio) = compare(&cfg);
    println!("{}", table(&cfg, &a, &b, ratio));
    assert_eq!(b.overcommitted_pfs, 0, "{b:?}");
    assert_eq!(b.not_met, 0, "{b:?}");
    assert_eq!(b.refused_at_node, 0, "{b:?}");
    assert!(ratio >= 1.3, "ratio {ratio:.2}: {a:?} vs {b:?}");
    assert!(
        a.overcommitted_pfs > 0,
        "the baseline really over-commits: {a:?}"
    );
    for o in [&a, &b] {
        assert_eq!(o.placed, o.met + o.not_met);
        assert_eq!(o.arrived, o.placed + o.gave_up);
    }
    // Deterministic: the same seed gives the same outcome.
    assert_eq!(simulate(&cfg, Mode::Webhook), b);
}
