//! The `mose.v1.*` option types: JSON in a containerd `Any` whose type URL
//! is the type's name. Unknown fields are refused (a misspelt option must
//! not be silently ignored).

use serde::{Deserialize, Serialize};

/// Type URL of [`RuntimeOptions`] (a container's runtime options, or a
/// task's create options).
pub const OPTIONS_TYPE: &str = "mose.v1.Options";
/// Type URL of [`CheckpointOptions`].
pub const CHECKPOINT_OPTIONS_TYPE: &str = "mose.v1.CheckpointOptions";

fn is_false(b: &bool) -> bool {
    !b
}

/// `mose.v1.Options`: the OCI runtime to use, and for a migration's
/// destination the CRIU image to restore from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeOptions {
    /// OCI runtime binary (runc, crun, youki); empty: runc.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub binary_name: String,
    /// `--root` of the runtime's state; empty: the shim's default.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub root: String,
    /// Use the systemd cgroup driver.
    #[serde(skip_serializing_if = "is_false")]
    pub systemd_cgroup: bool,
    /// Restore the task from this CRIU image directory (absolute path).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub restore_image: String,
    /// Restore lazily: anonymous memory is left out and CRIU hands each
    /// process's userfaultfd to the lazy-page handler listening on this unix
    /// socket (absolute path; needs `restore_image`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub lazy_pages_socket: String,
}

/// `mose.v1.CheckpointOptions`: containerd's runc checkpoint options plus
/// the CRIU settings a migration needs that runc has no flag for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointOptions {
    /// Stop the task after the dump.
    #[serde(skip_serializing_if = "is_false")]
    pub exit: bool,
    /// Directory receiving the CRIU image (absolute path).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub image_path: String,
    /// CRIU's work directory (logs).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub work_path: String,
    /// Dump established TCP connections closed (CRIU `tcp-close`).
    #[serde(skip_serializing_if = "is_false")]
    pub tcp_close: bool,
    /// Dump established TCP connections to be restored open (CRIU
    /// `tcp-established`, TCP repair): only where the restored container
    /// keeps the address they were made to.
    #[serde(skip_serializing_if = "is_false")]
    pub tcp_established: bool,
    /// The container's service address moves with it (see
    /// `mose_contract::network`): its link goes down before the dump, so no
    /// packet reaches or leaves the dumped connections, and stays down until
    /// the container is resumed (back up, announced) or removed. Refused for
    /// a container without a service address.
    #[serde(skip_serializing_if = "is_false")]
    pub hand_over_address: bool,
    /// Ignore connections not yet accepted (CRIU `skip-in-flight`).
    #[serde(skip_serializing_if = "is_false")]
    pub skip_in_flight: bool,
    /// Dump file locks (CRIU `--file-locks`).
    #[serde(skip_serializing_if = "is_false")]
    pub file_locks: bool,
    /// CRIU's lazy dump (runc only): the dump leaves the tasks' private
    /// anonymous memory in place, and CRIU's page server, bound to
    /// `127.0.0.1:<port>` on the node, hands it out on request (CRIU's
    /// page-server protocol, `criu/page-xfer.c`). The call returns once the
    /// page server listens; the dump ends when its one client closes the
    /// connection, and the tasks are left as the dump found them (the
    /// container stays paused). Needs `fs.pipe-max-size` ≥ 4 MiB; 0: not lazy.
    #[serde(skip_serializing_if = "is_zero")]
    pub lazy_page_server_port: u16,
    /// Waits for the lazy dump begun by an earlier call for this container
    /// to end, and returns its outcome (every other field is ignored).
    #[serde(skip_serializing_if = "is_false")]
    pub finish_lazy_dump: bool,
    /// With `finish_lazy_dump`: the page server's client never connected, so
    /// the shim first ends a page server still waiting for one (a
    /// connection that closes at once).
    #[serde(skip_serializing_if = "is_false")]
    pub wake_page_server: bool,
}

fn is_zero(v: &u16) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip_and_refuse_unknown_fields() {
        let o = RuntimeOptions {
            restore_image: "/run/mose/in/x/images".into(),
            lazy_pages_socket: "/run/mose/in/.s".into(),
            ..Default::default()
        };
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(
            json,
            r#"{"restore_image":"/run/mose/in/x/images","lazy_pages_socket":"/run/mose/in/.s"}"#
        );
        assert_eq!(serde_json::from_str::<RuntimeOptions>(&json).unwrap(), o);
        let e = serde_json::from_str::<RuntimeOptions>(r#"{"restore_imag":"/x"}"#).unwrap_err();
        assert!(e.to_string().contains("restore_imag"));
        let c: CheckpointOptions = serde_json::from_str(r#"{"tcp_close":true}"#).unwrap();
        assert!(c.tcp_close && !c.exit);
        assert!(serde_json::from_str::<CheckpointOptions>(r#"{"tcp":true}"#).is_err());
    }
}
