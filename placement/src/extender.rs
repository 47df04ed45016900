//! The kube-scheduler extender v1 wire format (k8s.io/kube-scheduler/extender/v1), field for field.
//!
//! The upstream Go structs carry no JSON tags, so their keys are the Go field names (`Pod`, `Nodes`,
//! `NodeNames`, `FailedNodes`, `FailedAndUnresolvableNodes`, `Error`, `Host`, `Score`); the embedded
//! Kubernetes objects use their usual lowerCamel keys. Go's decoder matches keys case-insensitively,
//! so lower-case spellings are accepted on input too. Only what the webhook needs is decoded: the
//! pod's metadata and the nodes' names; full Node objects are passed back byte for byte.
//!
//! The request types borrow from the request body (node names, raw Node objects) and the replies
//! borrow from the request, so judging 5,000 nodes allocates no per-node string.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A node name, borrowed from the request body unless JSON escapes forced a copy.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeName<'a>(#[serde(borrow)] pub Cow<'a, str>);

impl NodeName<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for NodeName<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NodeName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for NodeName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'a> From<&'a str> for NodeName<'a> {
    fn from(s: &'a str) -> Self {
        NodeName(Cow::Borrowed(s))
    }
}

impl From<String> for NodeName<'_> {
    fn from(s: String) -> Self {
        NodeName(Cow::Owned(s))
    }
}

impl PartialEq<str> for NodeName<'_> {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for NodeName<'_> {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

/// Body of `POST /filter` and `POST /prioritize`, borrowing from the request body.
#[derive(Debug, Deserialize)]
pub struct ExtenderArgs<'a> {
    #[serde(rename = "Pod", alias = "pod", default)]
    pub pod: Option<Pod>,
    /// Set when the extender is not `nodeCacheCapable`.
    #[serde(rename = "Nodes", alias = "nodes", default, borrow)]
    pub nodes: Option<NodeList<'a>>,
    /// Set when the extender is `nodeCacheCapable`.
    #[serde(
        rename = "NodeNames",
        alias = "nodeNames",
        alias = "nodenames",
        default,
        borrow
    )]
    pub node_names: Option<Vec<NodeName<'a>>>,
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

/// A `v1.NodeList` whose items are kept as raw JSON, borrowed from the request body.
#[derive(Debug, Deserialize)]
pub struct NodeList<'a> {
    #[serde(default, borrow)]
    pub items: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct NodeNameOnly<'a> {
    #[serde(default, borrow)]
    metadata: NameOnly<'a>,
}

#[derive(Default, Deserialize)]
struct NameOnly<'a> {
    #[serde(default, borrow)]
    name: NodeName<'a>,
}

/// `metadata.name` of a raw Node object (empty if absent).
pub fn node_name<'a>(raw: &'a RawValue) -> Result<NodeName<'a>, serde_json::Error> {
    let n: NodeNameOnly<'a> = serde_json::from_str(raw.get())?;
    Ok(n.metadata.name)
}

/// A `v1.NodeList` on the way out.
#[derive(Debug, Serialize)]
pub struct NodeListOut<'a> {
    pub kind: &'static str,
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    pub metadata: BTreeMap<String, String>,
    pub items: Vec<&'a RawValue>,
}

impl<'a> NodeListOut<'a> {
    pub fn new(items: Vec<&'a RawValue>) -> Self {
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
pub struct ExtenderFilterResult<'a> {
    #[serde(rename = "Nodes")]
    pub nodes: Option<NodeListOut<'a>>,
    #[serde(rename = "NodeNames")]
    pub node_names: Option<Vec<NodeName<'a>>>,
    #[serde(rename = "FailedNodes")]
    pub failed_nodes: NodeMap<'a>,
    #[serde(rename = "FailedAndUnresolvableNodes")]
    pub failed_and_unresolvable_nodes: NodeMap<'a>,
    #[serde(rename = "Error")]
    pub error: String,
}

impl ExtenderFilterResult<'_> {
    /// The JSON reply, written into a buffer sized once (5,000 nodes make a reply of ~200 KiB that
    /// would otherwise be grown by doubling).
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(self.encoded_len_hint());
        serde_json::to_writer(&mut buf, self)?;
        Ok(buf)
    }

    /// About the length of the JSON encoding.
    fn encoded_len_hint(&self) -> usize {
        let names = |v: &[NodeName]| v.iter().map(|n| n.len() + 3).sum::<usize>();
        let map = |m: &NodeMap| {
            m.0.iter()
                .map(|(n, r)| n.len() + r.len() + 6)
                .sum::<usize>()
        };
        let items = |l: &NodeListOut| l.items.iter().map(|i| i.get().len() + 1).sum::<usize>();
        128 + self.node_names.as_deref().map_or(0, names)
            + self.nodes.as_ref().map_or(0, items)
            + map(&self.failed_nodes)
            + map(&self.failed_and_unresolvable_nodes)
            + self.error.len()
    }
}

/// A `FailedNodesMap` (node name -> message), kept in the order nodes were judged and written as a
/// JSON object. Messages are shared between the nodes they apply to.
#[derive(Debug, Default, Clone)]
pub struct NodeMap<'a>(pub Vec<(NodeName<'a>, Arc<str>)>);

impl NodeMap<'_> {
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

impl Serialize for NodeMap<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, &**v)))
    }
}

/// One entry of the reply to `POST /prioritize` (a `HostPriorityList` is a JSON array of these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPriority<'a> {
    #[serde(rename = "Host", borrow)]
    pub host: NodeName<'a>,
    #[serde(rename = "Score")]
    pub score: i64,
}

/// The JSON of a `HostPriorityList`, written into a buffer sized once.
pub fn host_priorities_json(list: &[HostPriority]) -> serde_json::Result<Vec<u8>> {
    let hint = 2 + list.iter().map(|h| h.host.len() + 32).sum::<usize>();
    let mut buf = Vec::with_capacity(hint);
    serde_json::to_writer(&mut buf, list)?;
    Ok(buf)
}
