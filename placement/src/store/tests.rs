//! The store's decisions, on hand-made reports.

use super::*;
use conrdma_api::rate::Rate;
use conrdma_api::report::{PfReport, PodId, PoolReport, REPORT_VERSION};
use conrdma_api::Request;

fn settings(policy: Policy, unknown: UnknownNodes) -> Settings {
    Settings {
        node_ttl: Duration::from_secs(60),
        forget_after: Duration::from_secs(600),
        unknown_nodes: unknown,
        policy,
        max_score: 100,
    }
}

fn pf(name: &str, cap: u64, g: u64, free: u32) -> PfReport {
    PfReport {
        name: name.into(),
        line_rate_mbps: cap,
        capacity_mbps: cap,
        guaranteed_mbps: g,
        pods: 8 - free,
        vfs_total: 8,
        vfs_free: free,
    }
}

fn report(node: &str, pools: Vec<(&str, Vec<PfReport>)>) -> NodeReport {
    NodeReport {
        version: REPORT_VERSION,
        node: node.into(),
        time_unix_ms: 1,
        pools: pools
            .into_iter()
            .map(|(p, pfs)| PoolReport::from_pfs(p, pfs))
            .collect(),
    }
}

/// An idle pod's usage on VF 0 of PF "a" in pool "default".
fn usage(node: &str, uid: &str) -> UsageReport {
    UsageReport {
        node: node.into(),
        pod: PodId {
            namespace: "ns".into(),
            name: "p".into(),
            uid: uid.into(),
        },
        pool: "default".into(),
        pf: "a".into(),
        vf: 0,
        guaranteed_mbps: 0,
        limit_mbps: 0,
        tx_mbps: 0.0,
        rx_mbps: 0.0,
        window_start_unix_ms: 0,
        window_end_unix_ms: 1,
        is_final: false,
    }
}

fn ask(gbps: u64, pool: Option<&str>) -> Request {
    Request {
        guarantee: Rate::from_mbps(gbps * 1000),
        pool: pool.map(str::to_string),
        ..Request::default()
    }
}

#[test]
fn fit_is_per_pf_not_per_pool() {
    let t0 = Instant::now();
    let mut s = Store::new(settings(Policy::BestFit, UnknownNodes::Exclude));
    // 30G free in the pool, but at most 15G on one PF.
    s.put_node(
        report(
            "n1",
            vec![(
                "default",
                vec![pf("a", 25_000, 10_000, 4), pf("b", 25_000, 10_000, 4)],
            )],
        ),
        t0,
        0,
    );
    assert!(matches!(
        s.evaluate("n1", &ask(15, None), t0),
        Fit::Fits { score: 100 }
    ));
    for (req, why, text) in [
        (
            ask(20, None),
            Why::NoHeadroom,
            "no PF with a free VF has 20Gbps of guarantee left",
        ),
        (ask(40, None), Why::TooBig, "no PF can guarantee 40Gbps"),
        (
            ask(1, Some("fast")),
            Why::NoPool,
            "no RDMA pool \"fast\" on this node",
        ),
    ] {
        let fit = s.evaluate("n1", &req, t0);
        assert_eq!(fit, Fit::No(why));
        let reason = s.reason(fit, &req).unwrap();
        assert!(reason.contains(text), "{reason}");
        assert_eq!(why.resolvable(), why == Why::NoHeadroom);
    }
}

#[test]
fn no_free_vf_and_best_effort() {
    let t0 = Instant::now();
    let mut s = Store::new(settings(Policy::BestFit, UnknownNodes::Exclude));
    s.put_node(
        report("n1", vec![("default", vec![pf("a", 25_000, 0, 0)])]),
        t0,
        0,
    );
    assert!(matches!(
        s.evaluate("n1", &Request::default(), t0),
        Fit::No(Why::NoFreeVf)
    ));
    s.put_node(
        report("n1", vec![("default", vec![pf("a", 25_000, 25_000, 1)])]),
        t0,
        0,
    );
    assert!(matches!(
        s.evaluate("n1", &Request::default(), t0),
        Fit::Fits { .. }
    ));
}

#[test]
fn policies_rank_as_documented() {
    let t0 = Instant::now();
    let nodes = [
        report("tight", vec![("default", vec![pf("a", 25_000, 15_000, 4)])]),
        report("roomy", vec![("default", vec![pf("a", 200_000, 0, 8)])]),
    ];
    let mut scores = HashMap::new();
    for policy in [Policy::BestFit, Policy::Spread, Policy::LeastMeasuredUsage] {
        let mut s = Store::new(settings(policy, UnknownNodes::Exclude));
        for n in &nodes {
            s.put_node(n.clone(), t0, 0);
        }
        let mk = |node: &str, tx: f64| UsageReport {
            tx_mbps: tx,
            ..usage(node, &format!("u-{node}"))
        };
        s.put_usage(
            UsageBatch::new(vec![mk("tight", 1_000.0), mk("roomy", 150_000.0)]),
            t0,
        );
        let r = ask(10, None);
        let sc = |n: &str| s.score(s.evaluate(n, &r, t0));
        scores.insert(policy.name(), (sc("tight"), sc("roomy")));
    }
    assert_eq!(scores["best-fit"], (100, 5));
    assert_eq!(scores["spread"], (0, 95));
    assert_eq!(scores["least-measured-usage"], (96, 25));
}

#[test]
fn ttl_and_unknown_treatment() {
    let t0 = Instant::now();
    for (unknown, verdict_pass, score) in [
        (UnknownNodes::Exclude, false, 0),
        (UnknownNodes::Neutral, true, 50),
    ] {
        let mut s = Store::new(settings(Policy::BestFit, unknown));
        s.put_node(
            report("n1", vec![("default", vec![pf("a", 25_000, 0, 4)])]),
            t0,
            0,
        );
        let r = ask(1, None);
        assert!(matches!(
            s.evaluate("n1", &r, t0 + Duration::from_secs(60)),
            Fit::Fits { .. }
        ));
        let later = t0 + Duration::from_secs(61);
        let fit = s.evaluate("n1", &r, later);
        assert_eq!(fit, Fit::Unknown(Why::Stale));
        assert!(s
            .reason(fit, &r)
            .unwrap()
            .contains("older than the 60s TTL"));
        assert_eq!(s.verdict(fit) == Verdict::Pass, verdict_pass);
        assert_eq!(s.score(fit), score);
        let never = s.evaluate("n2", &r, t0);
        assert_eq!(never, Fit::Unknown(Why::NeverReported));
        assert!(s.reason(never, &r).unwrap().contains("no report"));
        s.prune(t0 + Duration::from_secs(601));
        assert_eq!(s.node_count(), 0);
    }
}

#[test]
fn usage_ordering_and_final() {
    let t0 = Instant::now();
    let mut s = Store::new(settings(Policy::LeastMeasuredUsage, UnknownNodes::Exclude));
    let mk = |end: u64, tx: f64, fin: bool| UsageReport {
        tx_mbps: tx,
        rx_mbps: 1.0,
        window_end_unix_ms: end,
        is_final: fin,
        ..usage("n1", "u1")
    };
    s.put_usage(
        UsageBatch::new(vec![mk(20, 200.0, false), mk(10, 100.0, false)]),
        t0,
    );
    assert_eq!(s.measured("n1", None, t0), (200.0, 1.0));
    s.put_usage(UsageBatch::new(vec![mk(30, 0.0, true)]), t0);
    assert_eq!(s.measured("n1", None, t0), (0.0, 0.0));
}
