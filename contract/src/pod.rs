//! Pod migration through the CRI: a pod created on the destination carries
//! `mose.io/migrate-from: <node>/<pod-namespace>/<pod>` on the pod (and so on
//! each of its containers, through containerd's `pod_annotations`), naming
//! the running pod it continues. The pod's CNI plugin (`mose-pod-cni`) gives
//! the new sandbox the source pod's IP, and the MOSE shim, at each container's
//! start, has the node agent pull that container's migration from the source
//! instead of starting it fresh.
//!
//! `<node>` is the source node's MOSE endpoint: a host name or IPv4 address,
//! with `:<port>` when it is not [`DEFAULT_ENDPOINT_PORT`].

use std::fmt;

/// Annotation naming the pod a new pod continues.
pub const MIGRATE_FROM_ANNOTATION: &str = "mose.io/migrate-from";
/// Accepted form of [`MIGRATE_FROM_ANNOTATION`].
pub const MIGRATE_FROM_FORM: &str =
    "expected <node>/<pod-namespace>/<pod>: the source node's MOSE \
     endpoint (a host name or IPv4 address, optionally :port) and the Kubernetes namespace and \
     name of the running pod, e.g. edge-1/default/tracker or 10.77.0.1:7700/default/tracker";
/// Port of a node's MOSE endpoint when `<node>` names none (`mose-plugin
/// --listen`'s default).
pub const DEFAULT_ENDPOINT_PORT: u16 = 7700;
/// containerd's CRI marks each container of a pod with its kind:
/// `sandbox` (the pause container) or `container`.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// containerd's CRI annotation with a container's name in its pod.
pub const CRI_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
/// The node agent's local socket for pod hand-overs (shim and CNI plugin
/// side), overridden by the environment variable [`AGENT_SOCKET_ENV`].
pub const DEFAULT_AGENT_SOCKET: &str = "/run/mose/pods.sock";
/// Environment variable naming the agent's pod socket.
pub const AGENT_SOCKET_ENV: &str = "MOSE_AGENT_SOCKET";

/// The pod a migrated pod continues: `<node>/<namespace>/<pod>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodOrigin {
    /// The source node's endpoint, `HOST:PORT`.
    pub endpoint: String,
    /// Kubernetes namespace of the source pod.
    pub namespace: String,
    /// Kubernetes name of the source pod.
    pub pod: String,
}

impl PodOrigin {
    /// Parses the annotation's value; the error says what is wrong.
    pub fn parse(value: &str) -> Result<Self, String> {
        let v = value.trim();
        let mut parts = v.split('/');
        let (Some(node), Some(namespace), Some(pod), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "{} has {} '/'-separated parts, not 3",
                crate::network::shown(v),
                v.split('/').count()
            ));
        };
        let endpoint = endpoint(node)?;
        dns_name(namespace, 63, "pod namespace")?;
        dns_name(pod, 253, "pod name")?;
        Ok(PodOrigin {
            endpoint,
            namespace: namespace.into(),
            pod: pod.into(),
        })
    }

    /// Whether the spec's annotations name a pod this container continues
    /// (`Ok(None)`: a fresh container; `Err`: the annotation is malformed).
    pub fn from_annotations<'a, I>(annotations: I) -> Result<Option<Self>, String>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        annotations
            .into_iter()
            .filter(|(k, _)| *k == MIGRATE_FROM_ANNOTATION)
            .last()
            .map(|(_, v)| Self::parse(v))
            .transpose()
    }
}

impl fmt::Display for PodOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pod {}/{} on {}",
            self.namespace, self.pod, self.endpoint
        )
    }
}

/// `HOST[:PORT]` as `HOST:PORT`.
fn endpoint(node: &str) -> Result<String, String> {
    let (host, port) = match node.rsplit_once(':') {
        Some((h, p)) => {
            let port: u16 = p.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                format!("node port {} is not 1 to 65535", crate::network::shown(p))
            })?;
            (h, port)
        }
        None => (node, DEFAULT_ENDPOINT_PORT),
    };
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !ok {
        return Err(format!(
            "node {} is not a host name or IPv4 address",
            crate::network::shown(host)
        ));
    }
    Ok(format!("{host}:{port}"))
}

/// A Kubernetes object name (RFC 1123: lower-case letters, digits, '-' and
/// '.', starting and ending with a letter or digit).
fn dns_name(s: &str, max: usize, what: &str) -> Result<(), String> {
    let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok = s.len() <= max
        && edge_ok(s.as_bytes().first())
        && edge_ok(s.as_bytes().last())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {} is not a Kubernetes name (lower-case letters, digits, '-' and '.', \
             at most {max} characters)",
            crate::network::shown(s)
        ))
    }
}

/// A request on the node agent's pod socket ([`DEFAULT_AGENT_SOCKET`]): one
/// JSON object per line, each answered by an [`AgentReply`] line.
///
/// - the pod CNI plugin, at a new sandbox's `ADD`: `pod_address`;
/// - the shim, at a pod container's task create: `pull`, answered once the
///   images are here; then, on the same connection after the restore,
///   `restored` or `restore_failed`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentRequest {
    /// The address of the pod `from` (the annotation's value) names.
    PodAddress { from: String },
    /// Pull container `container` of the pod `from` names into the CRI's
    /// container `id` of a pod in Kubernetes namespace `namespace` (which
    /// must be the origin's), by `technique`
    /// (`mose.io/technique`'s value; empty or `auto`: the agent chooses).
    Pull {
        from: String,
        container: String,
        namespace: String,
        id: String,
        #[serde(default)]
        technique: String,
    },
    /// The shim restored the pulled container; its init is `pid`.
    Restored { pid: u32 },
    /// The shim could not restore the pulled container.
    RestoreFailed { error: String },
}

/// The agent's answer: `ok` with the fields of the request's kind, or the
/// error.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentReply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// `pod_address`: `A.B.C.D/len`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// `pull`: the CRIU image directory to restore from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub images: String,
    /// `pull`: the lazy-page handler's socket (post-copy, hybrid).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lazy_socket: String,
}

impl AgentReply {
    pub fn failed(error: impl Into<String>) -> Self {
        AgentReply {
            ok: false,
            error: error.into(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_with_a_default_port() {
        let o = PodOrigin::parse("edge-1/default/tracker").unwrap();
        assert_eq!(o.endpoint, "edge-1:7700");
        assert_eq!(
            (o.namespace.as_str(), o.pod.as_str()),
            ("default", "tracker")
        );
        let o = PodOrigin::parse(" 10.77.0.1:7701/kube-system/a.b ").unwrap();
        assert_eq!(o.endpoint, "10.77.0.1:7701");
    }

    #[test]
    fn malformed_origins_are_refused_with_the_reason() {
        for (v, why) in [
            ("edge-1/default", "not 3"),
            ("edge-1/default/a/b", "not 3"),
            ("/default/a", "not a host name"),
            ("edge_1/default/a", "not a host name"),
            ("edge-1:0/default/a", "not 1 to 65535"),
            ("edge-1:99999/default/a", "not 1 to 65535"),
            ("edge-1/Default/a", "pod namespace"),
            ("edge-1/default/-a", "pod name"),
            ("edge-1/default/", "pod name"),
        ] {
            let e = PodOrigin::parse(v).unwrap_err();
            assert!(e.contains(why), "{v}: {e}");
        }
    }

    #[test]
    fn only_the_migrate_from_annotation_counts() {
        let none = PodOrigin::from_annotations([("mose.io/technique", "cold")]).unwrap();
        assert_eq!(none, None);
        let some =
            PodOrigin::from_annotations([(MIGRATE_FROM_ANNOTATION, "n1/default/p")]).unwrap();
        assert_eq!(some.unwrap().pod, "p");
        assert!(PodOrigin::from_annotations([(MIGRATE_FROM_ANNOTATION, "x")]).is_err());
    }
}
