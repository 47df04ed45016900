//! The shim command line, as containerd writes it (Go `flag` syntax):
//! `-namespace NS -address A -publish-binary P -id ID [-bundle B] [-debug] [start|delete]`.
//! Without an action the binary is the long-running server (what `start` launches), which also
//! takes `-socket PATH` (its listening socket is fd 3).

use crate::error::{Result, ShimError};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    pub namespace: String,
    pub id: String,
    pub address: String,
    pub publish_binary: String,
    pub bundle: String,
    pub socket: String,
    pub debug: bool,
    pub version: bool,
    /// `start`, `delete`, or None for server mode.
    pub action: Option<String>,
}

impl Flags {
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Flags> {
        let mut f = Flags::default();
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let Some(stripped) = arg.strip_prefix('-') else {
                if f.action.is_some() {
                    return Err(ShimError::Invalid(format!(
                        "unexpected argument {arg:?} after the action"
                    )));
                }
                f.action = Some(arg);
                continue;
            };
            let stripped = stripped.strip_prefix('-').unwrap_or(stripped);
            let (name, inline) = match stripped.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (stripped, None),
            };
            match name {
                "debug" | "v" | "version" => {
                    let on = match inline.as_deref() {
                        None | Some("true") | Some("1") => true,
                        Some("false") | Some("0") => false,
                        Some(v) => {
                            return Err(ShimError::Invalid(format!(
                                "flag -{name} takes true or false, not {v:?}"
                            )))
                        }
                    };
                    if name == "debug" {
                        f.debug = on;
                    } else {
                        f.version = on;
                    }
                }
                "namespace" | "id" | "address" | "publish-binary" | "bundle" | "socket" => {
                    let value = match inline {
                        Some(v) => v,
                        None => it.next().ok_or_else(|| {
                            ShimError::Invalid(format!("flag -{name} needs a value"))
                        })?,
                    };
                    let slot = match name {
                        "namespace" => &mut f.namespace,
                        "id" => &mut f.id,
                        "address" => &mut f.address,
                        "publish-binary" => &mut f.publish_binary,
                        "bundle" => &mut f.bundle,
                        _ => &mut f.socket,
                    };
                    *slot = value;
                }
                _ => {
                    return Err(ShimError::Invalid(format!(
                        "unknown flag -{name}; accepted: -namespace, -id, -address, -publish-binary, -bundle, -socket, -debug, -v"
                    )))
                }
            }
        }
        Ok(f)
    }

    /// Checks what every mode needs.
    pub fn require(&self, names: &[&str]) -> Result<()> {
        for n in names {
            let v = match *n {
                "namespace" => &self.namespace,
                "id" => &self.id,
                "address" => &self.address,
                "bundle" => &self.bundle,
                "socket" => &self.socket,
                _ => &self.publish_binary,
            };
            if v.is_empty() {
                return Err(ShimError::Invalid(format!("flag -{n} is required")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn containerd_start_and_delete_lines() {
        let f = Flags::parse(args(
            "-namespace k8s.io -address /run/containerd/containerd.sock -publish-binary /usr/bin/containerd -id abc -debug start",
        ))
        .unwrap();
        assert_eq!(f.namespace, "k8s.io");
        assert_eq!(f.id, "abc");
        assert!(f.debug);
        assert_eq!(f.action.as_deref(), Some("start"));
        f.require(&["namespace", "id", "address"]).unwrap();
        let f = Flags::parse(args("--id=x -bundle /b -namespace=n delete")).unwrap();
        assert_eq!((f.id.as_str(), f.bundle.as_str()), ("x", "/b"));
        assert!(!f.debug);
        assert!(f.require(&["address"]).is_err());
    }

    #[test]
    fn refusals() {
        assert!(Flags::parse(args("-frobnicate 1")).is_err());
        assert!(Flags::parse(args("-id")).is_err());
        assert!(Flags::parse(args("start delete")).is_err());
        assert!(Flags::parse(args("-debug=maybe")).is_err());
        assert!(Flags::parse(args("-v")).unwrap().version);
    }
}
