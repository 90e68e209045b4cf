//! `mose-tracker`: a multi-object-tracker-like workload (see
//! `mose_workloads::tracker`): the state service's checksummed memory and
//! TCP protocol (PING, VERIFY, STATS, QUIT), rewritten by a tracker's
//! per-frame access pattern instead of uniformly random pages.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use clap::Parser;
use mose_workloads::service::{Config, Service};
use mose_workloads::tracker::{self, TrackerConfig};

#[derive(Debug, Parser)]
#[command(
    name = "mose-tracker",
    args_override_self = true,
    about = "A multi-object-tracker-like workload: track records rewritten per frame (a hot set of \
             active tracks plus births), served over TCP like the state service (PING, VERIFY, \
             STATS, QUIT)",
    after_help = "STATS reports dirty_mib_per_s 0 (the state service's own uniform dirtier is \
                  off); `writes` counts the tracker's page writes."
)]
struct Flags {
    #[command(flatten)]
    tracker: TrackerConfig,
    /// TCP port.
    #[arg(long, value_name = "P", default_value_t = 7070)]
    port: u16,
    /// Listen address.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0")]
    bind: String,
    /// PRNG seed of the initial content and of the tracker's writes.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
}

fn main() -> ExitCode {
    mose_workloads::exit_on_sigterm();
    let f = Flags::parse();
    if let Err(e) = f.tracker.validate() {
        eprintln!("mose-tracker: {e:#}");
        return ExitCode::from(2);
    }
    let svc = match Service::start(Config {
        state_mib: f.tracker.tracks_mib,
        dirty_mib_per_s: 0.0,
        port: f.port,
        bind: f.bind.clone(),
        seed: f.seed,
        churn: false,
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mose-tracker: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let t = &f.tracker;
    eprintln!(
        "mose-tracker: listening on {} tracks_mib={} records={} active_tracks={} fps={} \
         write_mib_per_s={} distinct_mib_per_s={:.1}",
        svc.local_addr(),
        t.tracks_mib,
        t.slots(),
        t.active_tracks(),
        t.fps,
        t.write_mib_per_s,
        t.distinct_mib_per_s()
    );
    let stop = AtomicBool::new(false);
    match tracker::run(svc.state(), t, f.seed, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mose-tracker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(s: &str) -> Result<Flags, clap::Error> {
        Flags::try_parse_from(std::iter::once("mose-tracker").chain(s.split_whitespace()))
    }

    #[test]
    fn flags_parse_and_unknown_ones_are_refused() {
        Flags::command().debug_assert();
        let f = parse("").expect("defaults");
        assert_eq!(f.tracker, TrackerConfig::default());
        assert_eq!((f.port, f.bind.as_str(), f.seed), (7070, "0.0.0.0", 1));
        let f = parse(
            "--tracks-mib 64 --write-mib-per-s 16 --fps 25 --record-kib 8 --turnover 0.02 --port 9",
        )
        .expect("flags");
        assert_eq!(
            (
                f.tracker.tracks_mib,
                f.tracker.write_mib_per_s,
                f.tracker.fps
            ),
            (64, 16.0, 25.0)
        );
        assert_eq!(
            (f.tracker.record_kib, f.tracker.turnover, f.port),
            (8, 0.02, 9)
        );
        for bad in [
            "--bogus",
            "--fps",
            "--tracks-mib x",
            "--port 70000",
            "extra",
        ] {
            let e = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }
}
