//! The node's CRIU calibration, for real: `mose-plugin` in its hidden
//! calibration-target mode is dumped and restored by CRIU (root and CRIU
//! needed, as for every integration test of MOSE).

use mose_plugin::calibrate::Store;

#[test]
fn criu_calibration_dumps_and_restores_for_real() {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_mose-plugin"));
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path());
    store.calibrate_criu(exe, dir.path()).unwrap();
    let dump = &store.learned.samples["dump"];
    let restore = &store.learned.samples["restore"];
    assert_eq!((dump.len(), restore.len()), (2, 2));
    // the larger image holds at least the target's 64 MiB
    assert!(dump[1].bytes >= 64.0 * 1048576.0, "{dump:?}");
    assert!(dump.iter().chain(restore).all(|s| s.ms > 0.0));
    let c = store.learned.calibration();
    assert!(
        c.dump_bytes_per_s > 1e6 && c.restore_bytes_per_s > 1e6,
        "{c:?}"
    );
    // done once: a second call learns nothing new
    store.calibrate_criu(exe, dir.path()).unwrap();
    assert_eq!(store.learned.samples["dump"].len(), 2);
}
