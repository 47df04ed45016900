//! The extender verbs as plain functions over the [`Store`]: the HTTP handlers call these, and so
//! do the benchmarks and the placement simulator.

use std::collections::HashMap;
use std::time::Instant;

use conrdma_api::Request;

use crate::error::{PlacementError, Result};
use crate::extender::{
    node_name, ExtenderArgs, ExtenderFilterResult, HostPriority, NodeListOut, NodeName,
};
use crate::store::{Reasons, Store, Verdict};

/// What the pod asks for: `Ok(None)` for pods without `rdma.conrdma.io/` annotations (passed through
/// untouched), `Err(reason)` for pods whose annotations are invalid.
pub fn pod_request(args: &ExtenderArgs) -> Result<Result<Option<Request>, String>> {
    let pod = args
        .pod
        .as_ref()
        .ok_or_else(|| PlacementError::bad("ExtenderArgs", "Pod is missing"))?;
    let Some(ann) = pod.metadata.annotations.as_ref() else {
        return Ok(Ok(None));
    };
    Ok(Request::from_annotations(ann).map_err(|e| format!("conrdma: pod annotations: {e}")))
}

/// The candidate node names, from `NodeNames` (nodeCacheCapable; taken out of `args`) or the
/// `Nodes` list (left in place).
fn candidate_names<'a>(args: &mut ExtenderArgs<'a>) -> Result<Vec<NodeName<'a>>> {
    if let Some(names) = args.node_names.take() {
        return Ok(names);
    }
    let Some(list) = &args.nodes else {
        return Err(PlacementError::bad(
            "ExtenderArgs",
            "neither Nodes nor NodeNames is set",
        ));
    };
    list.items
        .iter()
        .enumerate()
        .map(|(i, raw)| match node_name(raw) {
            Ok(n) if !n.is_empty() => Ok(n),
            Ok(_) => Err(PlacementError::bad(
                "ExtenderArgs",
                format!("Nodes.items[{i}] has no metadata.name"),
            )),
            Err(e) => Err(PlacementError::bad(
                "ExtenderArgs",
                format!("Nodes.items[{i}]: {e}"),
            )),
        })
        .collect()
}

/// `POST /filter`: keeps the nodes that can admit the pod's guarantee on one PF with a free VF.
pub fn filter<'a>(
    store: &Store,
    mut args: ExtenderArgs<'a>,
    now: Instant,
) -> Result<ExtenderFilterResult<'a>> {
    let req = pod_request(&args)?;
    let by_names = args.node_names.is_some();
    if by_names && args.nodes.is_some() {
        tracing::debug!("ExtenderArgs has both Nodes and NodeNames: answering with NodeNames");
    }
    let req = match req {
        Ok(Some(r)) => r,
        Ok(None) => {
            // Not ours: hand the candidates back exactly as they came.
            let mut out = ExtenderFilterResult::default();
            if by_names {
                out.node_names = args.node_names;
            } else {
                let items = args.nodes.map(|l| l.items).unwrap_or_default();
                out.nodes = Some(NodeListOut::new(items));
            }
            return Ok(out);
        }
        Err(reason) => {
            let names = candidate_names(&mut args)?;
            let mut out = ExtenderFilterResult::default();
            let reason: std::sync::Arc<str> = reason.into();
            for n in names {
                out.failed_and_unresolvable_nodes
                    .0
                    .push((n, reason.clone()));
            }
            if by_names {
                out.node_names = Some(Vec::new());
            } else {
                out.nodes = Some(NodeListOut::new(Vec::new()));
            }
            return Ok(out);
        }
    };
    let names = candidate_names(&mut args)?;
    let reasons = Reasons::new(store.settings(), &req);
    let ask = store.ask(&req);
    let mut out = ExtenderFilterResult::default();
    if by_names {
        let mut passed = Vec::with_capacity(names.len());
        for n in names {
            match store.verdict(store.evaluate_ask(&n, &ask, now)) {
                Verdict::Pass => passed.push(n),
                Verdict::Failed(why) => out.failed_nodes.0.push((n, reasons.text(why).clone())),
                Verdict::Unresolvable(why) => out
                    .failed_and_unresolvable_nodes
                    .0
                    .push((n, reasons.text(why).clone())),
            }
        }
        out.node_names = Some(passed);
    } else {
        let items = args.nodes.map(|l| l.items).unwrap_or_default();
        let mut passed = Vec::with_capacity(items.len());
        for (n, item) in names.into_iter().zip(items) {
            match store.verdict(store.evaluate_ask(&n, &ask, now)) {
                Verdict::Pass => passed.push(item),
                Verdict::Failed(why) => out.failed_nodes.0.push((n, reasons.text(why).clone())),
                Verdict::Unresolvable(why) => out
                    .failed_and_unresolvable_nodes
                    .0
                    .push((n, reasons.text(why).clone())),
            }
        }
        out.nodes = Some(NodeListOut::new(passed));
    }
    Ok(out)
}

/// `POST /prioritize`: scores every candidate from 0 to `max_score` by the configured policy.
/// Pods that are not ours (or invalid) get 0 everywhere, which changes no ranking.
pub fn prioritize<'a>(
    store: &Store,
    mut args: ExtenderArgs<'a>,
    now: Instant,
) -> Result<Vec<HostPriority<'a>>> {
    let req = pod_request(&args)?;
    let names = candidate_names(&mut args)?;
    let req = match req {
        Ok(Some(r)) => r,
        Ok(None) | Err(_) => {
            return Ok(names
                .into_iter()
                .map(|host| HostPriority { host, score: 0 })
                .collect())
        }
    };
    let ask = store.ask(&req);
    Ok(names
        .into_iter()
        .map(|host| {
            let score = store.score(store.evaluate_ask(&host, &ask, now));
            HostPriority { host, score }
        })
        .collect())
}

/// Builds in-memory `ExtenderArgs` for node names and pod annotations (simulator, benchmarks).
pub fn args_for<'a, N: Into<NodeName<'a>>>(
    annotations: HashMap<String, String>,
    node_names: impl IntoIterator<Item = N>,
) -> ExtenderArgs<'a> {
    ExtenderArgs {
        pod: Some(crate::extender::Pod {
            metadata: crate::extender::ObjectMeta {
                annotations: Some(annotations),
                ..Default::default()
            },
        }),
        nodes: None,
        node_names: Some(node_names.into_iter().map(Into::into).collect()),
    }
}
