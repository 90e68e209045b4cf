//! Admission on the destination: what an incoming migration may bring to
//! this node.
//!
//! A migration carries a container *spec* that this node executes, so a
//! certificate from the cluster CA alone must not let one node start, say, a
//! privileged container with the host's `/` mounted on every other node (a
//! kubelet only runs what the control plane assigned it). Before anything
//! but control messages is received, the incoming container is checked
//! against this node's policy ([`rules::Rules`]); a refusal goes back to the
//! source as a `Failed` naming every violation and the setting that would
//! allow it, and nothing is written here.
//!
//! The policy is a TOML file (default `/etc/mose/admission.toml`, see
//! `config/admission.toml` and docs/security.md):
//!
//! ```toml
//! [default]                        # every containerd namespace
//! host-namespaces = ["network"]
//!
//! [namespaces.tools]               # overrides, field by field
//! privileged = true
//! ```
//!
//! Pods migrated through the CRI are not checked here: their spec is the
//! one the destination's own CRI request built (see [`crate::pods`]); the
//! peer's spec is never executed for them.

pub mod check;
pub mod mounts;
pub mod rules;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::RwLock,
};

use mose_wire::ContainerIdentity;
use serde::Deserialize;

pub use rules::Rules;

/// The default place of the policy file.
pub const DEFAULT_PATH: &str = "/etc/mose/admission.toml";

/// The policy file's shape: rules for every namespace, and per-namespace
/// overrides (a field set there replaces the default's).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub default: Rules,
    #[serde(default)]
    pub namespaces: BTreeMap<String, Rules>,
}

impl PolicyFile {
    /// The rules for containerd namespace `ns`: its section's fields, then
    /// the default section's, then the built-in defaults.
    pub fn rules_for(&self, ns: &str) -> Rules {
        match self.namespaces.get(ns) {
            Some(r) => r.over(&self.default),
            None => self.default.clone(),
        }
    }
}

/// Why a policy could not be loaded: the file and the cause.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("reading the admission policy {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the admission policy {} is not valid (see config/admission.toml for its fields)", .path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("the admission policy {}: {why}", .path.display())]
    Invalid { path: PathBuf, why: String },
}

/// This node's admission policy, reloadable (`mose-plugin` reloads it on
/// SIGHUP; a migration checks the policy current at its `Begin`).
#[derive(Debug)]
pub struct Admission {
    /// The file it came from; `None`: the built-in defaults.
    path: Option<PathBuf>,
    policy: RwLock<PolicyFile>,
}

impl Admission {
    /// The built-in defaults only (no file).
    pub fn defaults() -> Self {
        Admission {
            path: None,
            policy: RwLock::new(PolicyFile::default()),
        }
    }

    /// Loads the policy at `path`. Errors: the file cannot be read, is not
    /// TOML of [`PolicyFile`]'s shape (unknown fields included), or names an
    /// unknown capability or namespace type.
    pub fn load(path: &Path) -> Result<Self, AdmissionError> {
        Ok(Admission {
            path: Some(path.to_path_buf()),
            policy: RwLock::new(read(path)?),
        })
    }

    /// Loads `path` if given, else [`DEFAULT_PATH`] if it exists, else the
    /// built-in defaults. An explicitly given file that is missing is an
    /// error (a typo must not silently mean "defaults").
    pub fn from_option(path: Option<&Path>) -> Result<Self, AdmissionError> {
        match path {
            Some(p) => Self::load(p),
            None if Path::new(DEFAULT_PATH).exists() => Self::load(Path::new(DEFAULT_PATH)),
            None => Ok(Self::defaults()),
        }
    }

    /// Where the policy comes from, for logs and refusals.
    pub fn source(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => format!("built-in defaults, no {DEFAULT_PATH}"),
        }
    }

    /// Reads the file again; on an error the current policy stays.
    pub fn reload(&self) -> Result<(), AdmissionError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let fresh = read(path)?;
        match self.policy.write() {
            Ok(mut p) => *p = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    /// Checks an incoming container for node `node`. Errors: one sentence
    /// naming every violation and the policy setting that would allow it.
    pub fn check(&self, node: &str, container: &ContainerIdentity) -> Result<(), String> {
        let rules = match self.policy.read() {
            Ok(p) => p.rules_for(&container.namespace),
            Err(poisoned) => poisoned.into_inner().rules_for(&container.namespace),
        };
        let violations = check::violations(&rules, container);
        if violations.is_empty() {
            return Ok(());
        }
        let (what, allow): (Vec<_>, Vec<_>) =
            violations.into_iter().map(|v| (v.what, v.allow)).unzip();
        let mut allow: Vec<String> = allow.into_iter().flatten().collect();
        allow.dedup();
        let fix = if allow.is_empty() {
            String::new()
        } else {
            format!(
                "; an operator of {node} can admit it with {} under [namespaces.{}] in its admission policy",
                allow.join(", "),
                container.namespace
            )
        };
        Err(format!(
            "node {node} refuses container {} (namespace {}) by its admission policy ({}): {}{fix}",
            container.id,
            container.namespace,
            self.source(),
            what.join("; "),
        ))
    }
}

fn read(path: &Path) -> Result<PolicyFile, AdmissionError> {
    let text = std::fs::read_to_string(path).map_err(|source| AdmissionError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file: PolicyFile = toml::from_str(&text).map_err(|source| AdmissionError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    for (ns, r) in std::iter::once(("default", &file.default))
        .chain(file.namespaces.iter().map(|(k, v)| (k.as_str(), v)))
    {
        r.validate().map_err(|why| AdmissionError::Invalid {
            path: path.to_path_buf(),
            why: format!("[{ns}]: {why}"),
        })?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::error_chain;

    #[test]
    fn a_namespace_section_overrides_field_by_field() {
        let f: PolicyFile = toml::from_str(
            r#"
            [default]
            host-namespaces = ["network"]
            images = ["localhost/"]
            [namespaces.tools]
            privileged = true
            "#,
        )
        .expect("policy");
        let tools = f.rules_for("tools");
        assert!(tools.privileged());
        assert_eq!(tools.images(), Some(&["localhost/".to_string()][..]));
        assert!(!f.rules_for("other").privileged());
    }

    #[test]
    fn unknown_fields_and_names_are_refused_with_the_file() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("admission.toml");
        std::fs::write(&p, "[default]\nprivilegd = true\n").expect("write");
        let e = error_chain(&Admission::load(&p).unwrap_err());
        assert!(
            e.contains("admission.toml") && e.contains("privilegd"),
            "{e}"
        );
        std::fs::write(&p, "[default]\ncapabilities = [\"CAP_FLY\"]\n").expect("write");
        let e = error_chain(&Admission::load(&p).unwrap_err());
        assert!(e.contains("CAP_FLY"), "{e}");
        std::fs::write(&p, "[default]\nhost-namespaces = [\"time\"]\n").expect("write");
        let e = error_chain(&Admission::load(&p).unwrap_err());
        assert!(e.contains("time"), "{e}");
        assert!(Admission::from_option(Some(&d.path().join("absent.toml"))).is_err());
    }

    #[test]
    fn a_failed_reload_keeps_the_policy() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("admission.toml");
        std::fs::write(&p, "[default]\nprivileged = true\n").expect("write");
        let a = Admission::load(&p).expect("load");
        std::fs::write(&p, "not toml [").expect("write");
        assert!(a.reload().is_err());
        assert!(a.policy.read().expect("lock").default.privileged());
    }
}
