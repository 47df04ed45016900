//! Runtime options as they cross the shim: a protobuf `Any` on `start`'s stdin and in
//! `CreateTaskRequest.options`.
//!
//! CRI sends `runtimeoptions.v1.Options` (type_url = 1, config_path = 2, config_body = 3) for a
//! runtime type that is not runc's; its `config_body` is the options table as TOML. The stock runc
//! shim cannot decode that type and fails Create, so the proxy replaces it with
//! `containerd.runc.v1.Options` built from the runc keys of the table, or drops it.

use containerd_shim_protos::shim::oci::Options as RuncOptions;
use protobuf::well_known_types::any::Any;
use protobuf::{CodedInputStream, Message};

use crate::error::{Result, ShimError};
use crate::settings::Settings;

pub const RUNTIMEOPTIONS_TYPE: &str = "runtimeoptions.v1.Options";
pub const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";

/// The fields of `runtimeoptions.v1.Options`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeOptions {
    pub type_url: String,
    pub config_path: String,
    pub config_body: String,
}

impl RuntimeOptions {
    /// Decodes the message by hand (three string fields; anything else is skipped).
    pub fn decode(bytes: &[u8]) -> Result<RuntimeOptions> {
        let bad = |e: protobuf::Error| {
            ShimError::Invalid(format!("cannot decode {RUNTIMEOPTIONS_TYPE}: {e}"))
        };
        let mut out = RuntimeOptions::default();
        let mut is = CodedInputStream::from_bytes(bytes);
        while let Some(tag) = is.read_raw_tag_or_eof().map_err(bad)? {
            let (field, wire) = (tag >> 3, tag & 7);
            match (field, wire) {
                (1, 2) => out.type_url = is.read_string().map_err(bad)?,
                (2, 2) => out.config_path = is.read_string().map_err(bad)?,
                (3, 2) => out.config_body = is.read_string().map_err(bad)?,
                _ => {
                    let wt = protobuf::rt::WireType::new(wire).ok_or_else(|| {
                        ShimError::Invalid(format!(
                            "cannot decode {RUNTIMEOPTIONS_TYPE}: wire type {wire}"
                        ))
                    })?;
                    is.skip_field(wt).map_err(bad)?;
                }
            }
        }
        Ok(out)
    }

    /// Encodes it (used by tests playing containerd).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (field, s) in [
            (1u8, &self.type_url),
            (2, &self.config_path),
            (3, &self.config_body),
        ] {
            if s.is_empty() {
                continue;
            }
            out.push(field << 3 | 2);
            let mut n = s.len();
            loop {
                let b = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(b);
                    break;
                }
                out.push(b | 0x80);
            }
            out.extend_from_slice(s.as_bytes());
        }
        out
    }
}

fn type_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// Whether an `Any` is a runtime options message (ours or runc's), as opposed to another of the
/// typed extensions containerd 2.3 puts beside them.
pub fn is_options_type(url: &str) -> bool {
    matches!(type_name(url), RUNTIMEOPTIONS_TYPE | RUNC_OPTIONS_TYPE)
}

/// The TOML text of our options table carried by an `Any`, or "" when there is none (ctr, or a
/// runtime with no options table). The config file named by `config_path` is read when no body is
/// inline.
pub fn settings_text(any: Option<&Any>) -> Result<String> {
    let Some(any) = any.filter(|a| !a.type_url.is_empty()) else {
        return Ok(String::new());
    };
    match type_name(&any.type_url) {
        RUNTIMEOPTIONS_TYPE => {
            let o = RuntimeOptions::decode(&any.value)?;
            if !o.config_body.is_empty() || o.config_path.is_empty() {
                Ok(o.config_body)
            } else {
                std::fs::read_to_string(&o.config_path)
                    .map_err(|e| ShimError::io(format!("reading {}", o.config_path), e))
            }
        }
        // ctr's --runtime-config-path, or runc options given to us directly: nothing of ours.
        _ => Ok(String::new()),
    }
}

/// Parses `start`'s stdin (an encoded `Any`, or nothing).
pub fn any_from_bytes(bytes: &[u8]) -> Result<Option<Any>> {
    if bytes.is_empty() {
        return Ok(None);
    }
    Any::parse_from_bytes(bytes)
        .map(Some)
        .map_err(|e| ShimError::Invalid(format!("runtime options on stdin are not an Any: {e}")))
}

/// What to hand the runc shim instead of `options`: runc options pass through untouched; ours
/// become runc options built from the table's runc keys, or nothing.
pub fn for_runc(options: Option<&Any>, settings: &Settings) -> Result<Option<Any>> {
    if let Some(any) = options {
        if type_name(&any.type_url) == RUNC_OPTIONS_TYPE {
            return Ok(Some(any.clone()));
        }
    }
    settings.runc.as_ref().map(runc_any).transpose()
}

pub fn runc_any(o: &RuncOptions) -> Result<Any> {
    let mut any = Any::new();
    any.type_url = RUNC_OPTIONS_TYPE.to_string();
    any.value = o
        .write_to_bytes()
        .map_err(|e| ShimError::Invalid(format!("encoding runc options: {e}")))?;
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(body: &str) -> Any {
        let mut any = Any::new();
        any.type_url = RUNTIMEOPTIONS_TYPE.into();
        any.value = RuntimeOptions {
            type_url: "io.containerd.conrdma.v1".into(),
            config_path: String::new(),
            config_body: body.into(),
        }
        .encode();
        any
    }

    #[test]
    fn runtimeoptions_round_trip() {
        let o = RuntimeOptions {
            type_url: "t".into(),
            config_path: "/p".into(),
            config_body: "x".repeat(300),
        };
        assert_eq!(RuntimeOptions::decode(&o.encode()).unwrap(), o);
        assert!(RuntimeOptions::decode(&[0x0a, 0x05, b'a']).is_err());
    }

    #[test]
    fn our_table_is_read_and_replaced_for_runc() {
        let any = ours("limiter = \"simulated\"\nsysfs_root = \"/n\"\nSystemdCgroup = true\n");
        let bytes = any.write_to_bytes().unwrap();
        let back = any_from_bytes(&bytes).unwrap().unwrap();
        let text = settings_text(Some(&back)).unwrap();
        let settings = Settings::from_toml(&text).unwrap();
        let runc = for_runc(Some(&back), &settings).unwrap().unwrap();
        assert_eq!(runc.type_url, RUNC_OPTIONS_TYPE);
        let o = RuncOptions::parse_from_bytes(&runc.value).unwrap();
        assert!(o.systemd_cgroup);
        // No runc keys: the options are dropped.
        let plain = Settings::from_toml("").unwrap();
        assert!(for_runc(Some(&ours("")), &plain).unwrap().is_none());
        // runc's own options pass through.
        let r = runc_any(&o).unwrap();
        assert_eq!(for_runc(Some(&r), &plain).unwrap(), Some(r));
        assert_eq!(settings_text(None).unwrap(), "");
        assert!(any_from_bytes(&[]).unwrap().is_none());
    }
}
