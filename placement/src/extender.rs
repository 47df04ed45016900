//! The kube-scheduler extender v1 wire format (k8s.io/kube-scheduler/extender/v1), field for field.
//!
//! The upstream Go structs carry no JSON tags, so their keys are the Go field names (`Pod`, `Nodes`,
//! `NodeNames`, `FailedNodes`, `FailedAndUnresolvableNodes`, `Error`, `Host`, `Score`); the embedded
//! Kubernetes objects use their usual lowerCamel keys. Go's decoder matches keys case-insensitively,
//! so lower-case spellings are accepted on input too. Only what the webhook needs is decoded: the
//! pod's metadata and the nodes' names; full Node objects are passed back byte for byte.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Body of `POST /filter` and `POST /prioritize`.
#[derive(Debug, Deserialize)]
pub struct ExtenderArgs {
    #[serde(rename = "Pod", alias = "pod", default)]
    pub pod: Option<Pod>,
    /// Set when the extender is not `nodeCacheCapable`.
    #[serde(rename = "Nodes", alias = "nodes", default)]
    pub nodes: Option<NodeList>,
    /// Set when the extender is `nodeCacheCapable`.
    #[serde(
        rename = "NodeNames",
        alias = "nodeNames",
        alias = "nodenames",
        default
    )]
    pub node_names: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
}

#[derive(Debug, Default, Deserialize)]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub annotations: Option<HashMap<String, String>>,
}

/// A `v1.NodeList` whose items are kept as raw JSON.
#[derive(Debug, Deserialize)]
pub struct NodeList {
    #[serde(default)]
    pub items: Vec<Box<RawValue>>,
}

#[derive(Deserialize)]
struct NodeNameOnly {
    #[serde(default)]
    metadata: NameOnly,
}

#[derive(Default, Deserialize)]
struct NameOnly {
    #[serde(default)]
    name: String,
}

/// `metadata.name` of a raw Node object.
pub fn node_name(raw: &RawValue) -> Result<String, serde_json::Error> {
    let n: NodeNameOnly = serde_json::from_str(raw.get())?;
    Ok(n.metadata.name)
}

/// A `v1.NodeList` on the way out.
#[derive(Debug, Serialize)]
pub struct NodeListOut {
    pub kind: &'static str,
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    pub metadata: BTreeMap<String, String>,
    pub items: Vec<Box<RawValue>>,
}

impl NodeListOut {
    pub fn new(items: Vec<Box<RawValue>>) -> Self {
        NodeListOut {
            kind: "NodeList",
            api_version: "v1",
            metadata: BTreeMap::new(),
            items,
        }
    }
}

/// Reply to `POST /filter`.
#[derive(Debug, Default, Serialize)]
pub struct ExtenderFilterResult {
    #[serde(rename = "Nodes")]
    pub nodes: Option<NodeListOut>,
    #[serde(rename = "NodeNames")]
    pub node_names: Option<Vec<String>>,
    #[serde(rename = "FailedNodes")]
    pub failed_nodes: NodeMap,
    #[serde(rename = "FailedAndUnresolvableNodes")]
    pub failed_and_unresolvable_nodes: NodeMap,
    #[serde(rename = "Error")]
    pub error: String,
}

/// A `FailedNodesMap` (node name -> message), kept in the order nodes were judged and written as a
/// JSON object. Messages are shared between the nodes they apply to.
#[derive(Debug, Default, Clone)]
pub struct NodeMap(pub Vec<(String, Arc<str>)>);

impl NodeMap {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, node: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == node).map(|(_, m)| &**m)
    }
}

impl Serialize for NodeMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, &**v)))
    }
}

/// One entry of the reply to `POST /prioritize` (a `HostPriorityList` is a JSON array of these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPriority {
    #[serde(rename = "Host")]
    pub host: String,
    #[serde(rename = "Score")]
    pub score: i64,
}
