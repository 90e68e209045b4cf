//! Workloads for MOSE's live-migration testbed.
//!
//! * [`service`] / [`state`] / [`protocol`]: the state service, a stateful
//!   process holding S MiB of checksummed memory that is rewritten at a
//!   configurable rate — what MOSE migrates between edge nodes.
//! * [`probe`]: a client that PINGs the service at a fixed rate and reports
//!   the client-observed downtime and the continuity of the service's
//!   sequence counter; `verify` proves no page was lost in a migration.
//! * [`image`] / [`images`]: a deterministic OCI image builder and the
//!   images of the workloads, importable with `ctr`.
//! * [`uav`] / [`uav_client`]: a UAV-autopilot-like control loop over UDP
//!   (50 Hz setpoints answered with telemetry) and its ground-station client,
//!   which measures the loop's own downtime (longest telemetry gap, lost
//!   commands).
//! * [`tracker`]: a multi-object tracker's access pattern (per-frame updates
//!   of active track records) over the state service's memory.
//! * [`scenario`]: the MOSE paper's use cases as KPI scenarios: what runs and
//!   the `mose.io/*` targets it carries, and why.

pub mod image;
pub mod images;
pub mod probe;
pub mod protocol;
pub mod scenario;
pub mod service;
pub mod state;
pub mod tracker;
pub mod uav;
pub mod uav_client;

/// Makes SIGTERM and SIGINT end the process at once. A service runs as PID 1
/// of its container, where the default action of SIGTERM is to ignore it, so
/// `ctr task kill` would not stop it otherwise.
pub fn exit_on_sigterm() {
    extern "C" fn on_term(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: installs an async-signal-safe handler.
    unsafe {
        libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_term as *const () as libc::sighandler_t);
    }
}
