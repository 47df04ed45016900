//! Plugin identity sent in RegisterPlugin.

use std::ffi::OsStr;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::error::NriError;

/// Environment variable containerd sets to a pre-launched plugin's name.
pub const NAME_ENV: &str = "NRI_PLUGIN_NAME";
/// Environment variable containerd sets to a pre-launched plugin's index.
pub const IDX_ENV: &str = "NRI_PLUGIN_IDX";

/// Name and invocation index of a plugin.
///
/// containerd rejects a registration unless the name is non-empty and the
/// index is exactly two ASCII digits; plugins run in index order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PluginId {
    name: String,
    idx: String,
}

impl PluginId {
    /// Validates and builds an id.
    pub fn new(name: impl Into<String>, idx: impl Into<String>) -> Result<Self, NriError> {
        let name = name.into();
        let idx = idx.into();
        if name.is_empty() {
            return Err(NriError::InvalidPluginName(name));
        }
        if idx.len() != 2 || !idx.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NriError::InvalidPluginIdx(idx));
        }
        Ok(Self { name, idx })
    }

    /// Plugin name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Two-digit invocation index.
    pub fn idx(&self) -> &str {
        &self.idx
    }

    /// Takes the id the way containerd hands it to pre-launched plugins:
    /// NRI_PLUGIN_NAME and NRI_PLUGIN_IDX, with any missing part taken from
    /// the basename of `argv[0]` in the form `NN-name`.
    pub fn from_env_or_argv0() -> Result<Self, NriError> {
        let name = std::env::var(NAME_ENV).ok();
        let idx = std::env::var(IDX_ENV).ok();
        let argv0 = std::env::args_os().next();
        Self::resolve(name, idx, argv0.as_deref())
    }

    /// The selection logic of [`PluginId::from_env_or_argv0`], without
    /// reading the process state.
    fn resolve(
        name: Option<String>,
        idx: Option<String>,
        argv0: Option<&OsStr>,
    ) -> Result<Self, NriError> {
        let name = name.filter(|n| !n.is_empty());
        let idx = idx.filter(|i| !i.is_empty());
        if let (Some(name), Some(idx)) = (&name, &idx) {
            return Self::new(name.clone(), idx.clone());
        }
        let from_argv0 = argv0
            .and_then(|a| Path::new(a).file_name())
            .and_then(OsStr::to_str)
            .and_then(|base| base.parse::<PluginId>().ok())
            .ok_or(NriError::NoPluginId)?;
        Self::new(
            name.unwrap_or(from_argv0.name),
            idx.unwrap_or(from_argv0.idx),
        )
    }
}

impl FromStr for PluginId {
    type Err = NriError;

    /// Parses `NN-name`, the file-name convention of pre-launched plugins.
    fn from_str(s: &str) -> Result<Self, NriError> {
        match s.split_once('-') {
            Some((idx, name)) => Self::new(name, idx),
            None => Err(NriError::NoPluginId),
        }
    }
}

impl fmt::Display for PluginId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.idx, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_name_and_idx() {
        assert!(PluginId::new("conrdma", "10").is_ok());
        assert!(matches!(
            PluginId::new("", "10"),
            Err(NriError::InvalidPluginName(_))
        ));
        for bad in ["1", "100", "a1", "", "1 ", "١٢"] {
            assert!(
                matches!(PluginId::new("x", bad), Err(NriError::InvalidPluginIdx(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn parses_nn_name() {
        let id: PluginId = "05-conrdma-nri".parse().expect("valid");
        assert_eq!(id.idx(), "05");
        assert_eq!(id.name(), "conrdma-nri");
        assert_eq!(id.to_string(), "05-conrdma-nri");
        assert!("conrdma".parse::<PluginId>().is_err());
        assert!("5-x".parse::<PluginId>().is_err());
        assert!("05-".parse::<PluginId>().is_err());
    }

    #[test]
    fn env_wins_and_argv0_fills_gaps() {
        let argv0 = OsStr::new("/opt/nri/plugins/20-conrdma");
        let id = PluginId::resolve(Some("envname".into()), Some("07".into()), Some(argv0))
            .expect("env id");
        assert_eq!((id.name(), id.idx()), ("envname", "07"));

        let id = PluginId::resolve(None, None, Some(argv0)).expect("argv0 id");
        assert_eq!((id.name(), id.idx()), ("conrdma", "20"));

        let id = PluginId::resolve(None, Some("30".into()), Some(argv0)).expect("mixed");
        assert_eq!((id.name(), id.idx()), ("conrdma", "30"));

        assert!(matches!(
            PluginId::resolve(None, None, Some(OsStr::new("/usr/bin/conrdma-nri"))),
            Err(NriError::NoPluginId)
        ));
        assert!(matches!(
            PluginId::resolve(Some("x".into()), Some("7".into()), None),
            Err(NriError::InvalidPluginIdx(_))
        ));
    }
}
