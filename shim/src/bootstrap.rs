//! The `start` handshake with each containerd line.
//!
//! | containerd | stdin                          | reply on stdout                         |
//! |------------|--------------------------------|-----------------------------------------|
//! | 1.7        | runtime options `Any` or empty | the address as plain text (version 2)   |
//! | 2.0 - 2.2  | runtime options `Any` or empty | plain text (read as version 2) or JSON  |
//! | 2.3+       | protobuf `BootstrapParams`     | protobuf `BootstrapResult`              |
//!
//! 1.7 refuses any JSON version above 2, and 2.0-2.2 set the same `MAX_SHIM_VERSION=2` as 1.7, so
//! before 2.3 only the calling binary tells the lines apart (`crate::line`): 1.7 gets the plain
//! address (task API v2), 2.0-2.2 the JSON version 3, 2.3+ a `BootstrapResult` with version 3.
//! The proxy serves both service names either way, so the version only names the client
//! containerd uses. The `task_api` setting overrides the choice.

use protobuf::well_known_types::any::Any;
use protobuf::Message;

use crate::error::{Result, ShimError};

mod generated {
    include!(concat!(env!("OUT_DIR"), "/bootstrap/mod.rs"));
}
pub use generated::bootstrap::{BootstrapParams, BootstrapResult, Extension};

/// The task API version the proxy reports to a containerd that speaks the bootstrap protocol.
pub const TASK_API_VERSION: i32 = 3;

/// What `start` read from stdin.
#[derive(Debug, Clone, PartialEq)]
pub enum StartInput {
    /// containerd 2.3+: the bootstrap message (the runtime options are among its extensions).
    Bootstrap(Box<BootstrapParams>),
    /// containerd up to 2.2: a runtime options `Any`, or nothing.
    Legacy(Option<Any>),
}

impl StartInput {
    /// Tells the two apart. A runtime options `Any` decodes as `BootstrapParams` too (its
    /// type_url and value fill fields 1 and 2), so the message counts as a bootstrap only when
    /// its instance id and namespace are the `-id` and `-namespace` containerd passed.
    pub fn parse(stdin: &[u8], id: &str, namespace: &str) -> Result<StartInput> {
        if !stdin.is_empty() {
            if let Ok(p) = BootstrapParams::parse_from_bytes(stdin) {
                if p.instance_id == id && p.namespace == namespace {
                    return Ok(StartInput::Bootstrap(Box::new(p)));
                }
            }
        }
        crate::options::any_from_bytes(stdin).map(StartInput::Legacy)
    }

    /// The runtime options, wherever this line put them.
    pub fn options(&self) -> Option<Any> {
        match self {
            StartInput::Legacy(any) => any.clone(),
            StartInput::Bootstrap(p) => p
                .extensions
                .iter()
                .filter_map(|e| e.value.as_ref())
                .find(|a| crate::options::is_options_type(&a.type_url))
                .cloned(),
        }
    }

    /// The bytes `start` prints for a shim serving at `address` (`unix:///...`). `task_api` is the
    /// `task_api` setting: before 2.3, unset or 2 is the plain address and 3 the JSON form 2.0-2.2
    /// accept (1.7 refuses it); to 2.3+, the version in the `BootstrapResult` (default 3).
    pub fn reply(&self, address: &str, task_api: Option<i32>) -> Result<Vec<u8>> {
        match (self, task_api) {
            (StartInput::Legacy(_), None | Some(2)) => Ok(address.as_bytes().to_vec()),
            (StartInput::Legacy(_), Some(version)) => serde_json::to_vec(&serde_json::json!({
                "version": version,
                "address": address,
                "protocol": "ttrpc",
            }))
            .map_err(|e| ShimError::Invalid(format!("encoding the bootstrap reply: {e}"))),
            (StartInput::Bootstrap(_), version) => {
                let mut r = BootstrapResult::new();
                r.version = version.unwrap_or(TASK_API_VERSION);
                r.address = address.to_string();
                r.protocol = "ttrpc".into();
                r.write_to_bytes()
                    .map_err(|e| ShimError::Invalid(format!("encoding the bootstrap result: {e}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::{RuntimeOptions, RUNTIMEOPTIONS_TYPE};

    fn options_any(body: &str) -> Any {
        let mut any = Any::new();
        any.type_url = RUNTIMEOPTIONS_TYPE.into();
        any.value = RuntimeOptions {
            config_body: body.into(),
            ..Default::default()
        }
        .encode();
        any
    }

    fn params(id: &str, ns: &str, ext: Vec<Any>) -> BootstrapParams {
        let mut p = BootstrapParams::new();
        p.instance_id = id.into();
        p.namespace = ns.into();
        p.containerd_version = "2.3.0".into();
        p.extensions = ext
            .into_iter()
            .map(|a| {
                let mut e = Extension::new();
                e.value = Some(a).into();
                e
            })
            .collect();
        p
    }

    #[test]
    fn a_bootstrap_message_is_told_from_an_options_any_by_id_and_namespace() {
        let any = options_any("limiter = \"netlink\"");
        let bytes = any.write_to_bytes().unwrap();
        // The Any does decode as BootstrapParams, with its type_url as the instance id.
        let as_params = BootstrapParams::parse_from_bytes(&bytes).unwrap();
        assert_eq!(as_params.instance_id, RUNTIMEOPTIONS_TYPE);
        let got = StartInput::parse(&bytes, "sb1", "k8s.io").unwrap();
        assert_eq!(got, StartInput::Legacy(Some(any.clone())));
        assert_eq!(got.options(), Some(any.clone()));
        assert_eq!(got.reply("unix:///s/x", None).unwrap(), b"unix:///s/x");
        assert_eq!(got.reply("unix:///s/x", Some(2)).unwrap(), b"unix:///s/x");
        let json: serde_json::Value =
            serde_json::from_slice(&got.reply("unix:///s/x", Some(3)).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"version": 3, "address": "unix:///s/x", "protocol": "ttrpc"})
        );

        let p = params("sb1", "k8s.io", vec![any.clone()]);
        let got = StartInput::parse(&p.write_to_bytes().unwrap(), "sb1", "k8s.io").unwrap();
        assert!(matches!(got, StartInput::Bootstrap(_)));
        assert_eq!(got.options(), Some(any));
        let r =
            BootstrapResult::parse_from_bytes(&got.reply("unix:///s/x", None).unwrap()).unwrap();
        assert_eq!(
            (r.version, r.address.as_str(), r.protocol.as_str()),
            (3, "unix:///s/x", "ttrpc")
        );
        // Another id: not ours, so not a bootstrap message.
        let got = StartInput::parse(
            &params("other", "k8s.io", vec![]).write_to_bytes().unwrap(),
            "sb1",
            "k8s.io",
        );
        assert!(!matches!(got, Ok(StartInput::Bootstrap(_))));
    }

    #[test]
    fn empty_stdin_is_the_legacy_protocol_without_options() {
        let got = StartInput::parse(&[], "a", "k8s.io").unwrap();
        assert_eq!(got, StartInput::Legacy(None));
        assert_eq!(got.options(), None);
    }
}
