//! The rules of one namespace: what an incoming container may have beyond a
//! confined container's defaults. Every field is optional so a namespace's
//! section can override the default section field by field; unset
//! everywhere, each means the safe default documented on it.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

/// containerd's default capability set (`oci.WithDefaultSpec`'s
/// `defaultUnixCaps`, the same as Docker's and the CRI's default): what any
/// container may hold without the operator allowing more.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability name Linux defines (capabilities(7), up to Linux 6.x):
/// a policy naming another is a typo, refused when the file is loaded.
const KNOWN_CAPABILITIES: &[&str] = &[
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_READ",
    "CAP_AUDIT_WRITE",
    "CAP_BLOCK_SUSPEND",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_KILL",
    "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_RAW",
    "CAP_PERFMON",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYSLOG",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_CHROOT",
    "CAP_SYS_MODULE",
    "CAP_SYS_NICE",
    "CAP_SYS_PACCT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_WAKE_ALARM",
];

/// The host namespaces a container may share (OCI `linux.namespaces`
/// types; a type missing from the spec, or joined by `path`, is shared).
pub const NAMESPACE_TYPES: &[&str] = &["network", "pid", "ipc", "uts", "mount"];

/// One namespace's rules (TOML keys in kebab-case).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Rules {
    /// Everything a privileged container has: any capability, host
    /// devices, no seccomp/AppArmor, unmasked kernel paths. Default false.
    pub privileged: Option<bool>,
    /// Capabilities allowed beyond [`DEFAULT_CAPABILITIES`] (`CAP_NET_ADMIN`
    /// or `NET_ADMIN`). Default none.
    pub capabilities: Option<Vec<String>>,
    /// Host namespaces the container may share ([`NAMESPACE_TYPES`]).
    /// Default none.
    pub host_namespaces: Option<Vec<String>>,
    /// Host directories (absolute; their subtrees included) bind mounts may
    /// come from. Default none.
    pub host_paths: Option<Vec<PathBuf>>,
    /// Host devices (`linux.devices`, device cgroup rules allowing every
    /// device). Default false.
    pub devices: Option<bool>,
    /// No seccomp profile, or AppArmor `unconfined`. Default false.
    pub unconfined: Option<bool>,
    /// OCI hook programs (absolute paths) the spec may run on this node.
    /// Default none.
    pub hooks: Option<Vec<PathBuf>>,
    /// Image reference prefixes (`registry.example/`, `localhost/team/`)
    /// allowed. Default: any image (its content comes with the migration,
    /// checked by digest).
    pub images: Option<Vec<String>>,
    /// Annotations an OCI runtime or CRIU acts on (`org.criu.*`,
    /// `org.systemd.property.*`, `run.oci.*`) allowed, by exact key.
    /// Default none.
    pub annotations: Option<Vec<String>>,
}

impl Rules {
    /// `self`'s fields, else `base`'s.
    pub fn over(&self, base: &Rules) -> Rules {
        Rules {
            privileged: self.privileged.or(base.privileged),
            capabilities: self
                .capabilities
                .clone()
                .or_else(|| base.capabilities.clone()),
            host_namespaces: self
                .host_namespaces
                .clone()
                .or_else(|| base.host_namespaces.clone()),
            host_paths: self.host_paths.clone().or_else(|| base.host_paths.clone()),
            devices: self.devices.or(base.devices),
            unconfined: self.unconfined.or(base.unconfined),
            hooks: self.hooks.clone().or_else(|| base.hooks.clone()),
            images: self.images.clone().or_else(|| base.images.clone()),
            annotations: self
                .annotations
                .clone()
                .or_else(|| base.annotations.clone()),
        }
    }

    pub fn privileged(&self) -> bool {
        self.privileged.unwrap_or(false)
    }

    pub fn devices(&self) -> bool {
        self.privileged() || self.devices.unwrap_or(false)
    }

    pub fn unconfined(&self) -> bool {
        self.privileged() || self.unconfined.unwrap_or(false)
    }

    pub fn images(&self) -> Option<&[String]> {
        self.images.as_deref()
    }

    /// Whether capability `cap` (`CAP_X`) may be held.
    pub fn allows_capability(&self, cap: &str) -> bool {
        self.privileged()
            || DEFAULT_CAPABILITIES.contains(&cap)
            || self
                .capabilities
                .iter()
                .flatten()
                .any(|c| canonical_capability(c) == cap)
    }

    /// Whether the host's namespace of `typ` may be shared.
    pub fn allows_host_namespace(&self, typ: &str) -> bool {
        self.host_namespaces.iter().flatten().any(|t| t == typ)
    }

    /// Whether `source` (absolute, without `..`) lies in an allowed host
    /// directory.
    pub fn allows_host_path(&self, source: &Path) -> bool {
        self.host_paths
            .iter()
            .flatten()
            .any(|dir| source.starts_with(dir))
    }

    /// Whether the hook program at `path` may run.
    pub fn allows_hook(&self, path: &Path) -> bool {
        self.hooks.iter().flatten().any(|h| h == path)
    }

    /// Whether image reference `image` is from an allowed prefix.
    ///
    /// An entry matches the reference itself, or a reference continuing it
    /// at a component boundary: `docker.io` and `docker.io/` match
    /// `docker.io/library/x` but not `docker.io.evil/x`; `localhost/app`
    /// matches `localhost/app:1` and `localhost/app/x`, not `localhost/apple`.
    pub fn allows_image(&self, image: &str) -> bool {
        match &self.images {
            None => true,
            Some(prefixes) => prefixes.iter().any(|p| {
                image.strip_prefix(p.as_str()).is_some_and(|rest| {
                    rest.is_empty()
                        || p.ends_with(['/', ':', '@'])
                        || rest.starts_with(['/', ':', '@'])
                })
            }),
        }
    }

    /// Whether annotation `key` may come.
    pub fn allows_annotation(&self, key: &str) -> bool {
        self.annotations.iter().flatten().any(|a| a == key)
    }

    /// Refuses names and paths a policy cannot mean (a typo must not widen
    /// or silently narrow what is allowed).
    pub fn validate(&self) -> Result<(), String> {
        for c in self.capabilities.iter().flatten() {
            if !KNOWN_CAPABILITIES.contains(&canonical_capability(c).as_str()) {
                return Err(format!("capabilities: unknown capability {c:?}"));
            }
        }
        for t in self.host_namespaces.iter().flatten() {
            if !NAMESPACE_TYPES.contains(&t.as_str()) {
                return Err(format!(
                    "host-namespaces: {t:?} is not one of {}",
                    NAMESPACE_TYPES.join(", ")
                ));
            }
        }
        for (key, paths) in [("host-paths", &self.host_paths), ("hooks", &self.hooks)] {
            for p in paths.iter().flatten() {
                if !is_plain_absolute(p) {
                    return Err(format!(
                        "{key}: {:?} must be an absolute path without `..`",
                        p.display().to_string()
                    ));
                }
            }
        }
        if self.annotations.iter().flatten().any(String::is_empty) {
            return Err("annotations: an empty key allows nothing; remove it".into());
        }
        if self.images.iter().flatten().any(String::is_empty) {
            return Err(
                "images: an empty prefix would allow every image; remove `images` to allow any"
                    .into(),
            );
        }
        Ok(())
    }
}

/// `NET_ADMIN` or `cap_net_admin` as `CAP_NET_ADMIN`.
pub fn canonical_capability(c: &str) -> String {
    let up = c.to_ascii_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

/// Absolute and free of `..` (so prefix checks mean what they say).
pub fn is_plain_absolute(p: &Path) -> bool {
    p.is_absolute() && !p.components().any(|c| c == Component::ParentDir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_allow_only_a_confined_container() {
        let r = Rules::default();
        assert!(r.allows_capability("CAP_CHOWN"));
        assert!(!r.allows_capability("CAP_SYS_ADMIN"));
        assert!(!r.allows_host_namespace("network"));
        assert!(!r.allows_host_path(Path::new("/")));
        assert!(!r.devices() && !r.unconfined() && !r.privileged());
        assert!(r.allows_image("anything.example/x:1"));
    }

    #[test]
    fn allowed_capabilities_paths_and_images_match_as_written() {
        let r = Rules {
            capabilities: Some(vec!["net_admin".into()]),
            host_paths: Some(vec!["/srv/data".into()]),
            images: Some(vec!["localhost/".into()]),
            ..Default::default()
        };
        assert!(r.allows_capability("CAP_NET_ADMIN"));
        assert!(r.allows_host_path(Path::new("/srv/data/x")));
        assert!(!r.allows_host_path(Path::new("/srv/database")));
        assert!(r.allows_image("localhost/mose-test/busybox:latest"));
        assert!(!r.allows_image("docker.io/library/busybox"));
        let hosts = Rules {
            images: Some(vec!["docker.io".into(), "localhost/app".into()]),
            ..Default::default()
        };
        assert!(hosts.allows_image("docker.io/library/x:1"));
        assert!(!hosts.allows_image("docker.io.evil/x"));
        assert!(hosts.allows_image("localhost/app:1") && hosts.allows_image("localhost/app"));
        assert!(!hosts.allows_image("localhost/apple:1"));
        assert!(r.validate().is_ok());
    }

    #[test]
    fn typos_and_loose_paths_are_refused() {
        let bad = |r: Rules| r.validate().unwrap_err();
        assert!(bad(Rules {
            capabilities: Some(vec!["CAP_FLY".into()]),
            ..Default::default()
        })
        .contains("CAP_FLY"));
        assert!(bad(Rules {
            host_paths: Some(vec!["/srv/../".into()]),
            ..Default::default()
        })
        .contains("absolute"));
        assert!(bad(Rules {
            images: Some(vec![String::new()]),
            ..Default::default()
        })
        .contains("empty prefix"));
    }
}
