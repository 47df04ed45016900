//! What the shim reads from a bundle's OCI `config.json`: its annotations (CRI's metadata, the pod
//! annotations containerd passed through, and the NRI plugin's allocation).

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Result, ShimError};

pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
/// runc's own grouping key, which wins over the sandbox id.
pub const RUNC_GROUP: &str = "io.containerd.runc.v2.group";

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Spec {
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

impl Spec {
    pub fn read(bundle: &Path) -> Result<Spec> {
        let path = bundle.join("config.json");
        let text = std::fs::read(&path)
            .map_err(|e| ShimError::io(format!("reading {}", path.display()), e))?;
        serde_json::from_slice(&text)
            .map_err(|e| ShimError::Invalid(format!("{} is not an OCI spec: {e}", path.display())))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.annotations
            .get(key)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    pub fn is_sandbox(&self) -> bool {
        self.get(CONTAINER_TYPE) == Some("sandbox")
    }

    pub fn is_cri(&self) -> bool {
        self.get(CONTAINER_TYPE).is_some()
    }

    pub fn sandbox_id(&self) -> Option<&str> {
        self.get(SANDBOX_ID)
    }

    pub fn container_name(&self) -> Option<&str> {
        self.get(CONTAINER_NAME)
    }

    /// The shim group this container belongs to: runc's group annotation, else the CRI sandbox
    /// id, else the container itself.
    pub fn group<'a>(&'a self, id: &'a str) -> &'a str {
        self.get(RUNC_GROUP)
            .or_else(|| self.sandbox_id())
            .unwrap_or(id)
    }

    /// The pod's identity from CRI's annotations, when all three are there.
    pub fn pod(&self) -> Option<conrdma_api::report::PodId> {
        Some(conrdma_api::report::PodId {
            namespace: self.get(SANDBOX_NAMESPACE)?.to_string(),
            name: self.get(SANDBOX_NAME)?.to_string(),
            uid: self.get(SANDBOX_UID)?.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cri_annotations() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","annotations":{
                "io.kubernetes.cri.container-type":"sandbox",
                "io.kubernetes.cri.sandbox-id":"sb1",
                "io.kubernetes.cri.sandbox-name":"trainer",
                "io.kubernetes.cri.sandbox-namespace":"default",
                "io.kubernetes.cri.sandbox-uid":"u-1"}}"#,
        )
        .unwrap();
        let s = Spec::read(dir.path()).unwrap();
        assert!(s.is_sandbox() && s.is_cri());
        assert_eq!(s.group("other"), "sb1");
        assert_eq!(s.pod().unwrap().name, "trainer");
        let plain = Spec::default();
        assert_eq!(plain.group("c1"), "c1");
        assert!(plain.pod().is_none());
        assert!(Spec::read(&dir.path().join("nope")).is_err());
    }
}
