//! Container resource metrics (Stats), read from the container's cgroup in
//! the format containerd expects (`io.containerd.cgroups.v1.Metrics` or
//! `io.containerd.cgroups.v2.Metrics`).

use containerd_shim::{
    cgroup::{collect_metrics, collect_metrics_v2, get_cgroup},
    protos::protobuf::{well_known_types::any::Any, Message},
};

use crate::error::{Error, Result};

/// Collects the metrics of the cgroup holding `pid` (the container's init).
pub fn collect(pid: i32) -> Result<Any> {
    if pid <= 0 {
        return Err(Error::FailedPrecondition(
            "no metrics: the container has no running init process".into(),
        ));
    }
    let cg = get_cgroup(pid as u32)
        .map_err(|e| Error::Internal(format!("cannot find the cgroup of pid {pid}: {e}")))?;
    let (type_url, value) = if cg.v2() {
        let m = collect_metrics_v2(&cg)
            .map_err(|e| Error::Internal(format!("cannot read cgroup v2 metrics: {e}")))?;
        ("io.containerd.cgroups.v2.Metrics", m.write_to_bytes()?)
    } else {
        let m = collect_metrics(&cg)
            .map_err(|e| Error::Internal(format!("cannot read cgroup v1 metrics: {e}")))?;
        ("io.containerd.cgroups.v1.Metrics", m.write_to_bytes()?)
    };
    Ok(Any {
        type_url: type_url.to_string(),
        value,
        ..Default::default()
    })
}
