//! CRIU's kernel-feature cache (`/run/criu.kdat`) on nodes whose `/run` is
//! not a tmpfs: `scripts/criu-kdat.sh` makes it there and records the boot
//! it was made in. A cache from another boot may describe another kernel,
//! so it is removed before CRIU runs (CRIU then probes the kernel itself).
//! Where `/run` is a tmpfs CRIU manages the file and no record exists.

use std::path::Path;

use tracing::{info, warn};

/// CRIU's cache file (criu/include/kerndat.h, `KERNDAT_CACHE_FILE`).
const KDAT: &str = "/run/criu.kdat";
/// Boot id the cache was made in (written by scripts/criu-kdat.sh).
const BOOT_RECORD: &str = "/run/mose/criu-kdat.boot";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// Removes a cache MOSE made in an earlier boot (and its record).
pub fn forget_if_stale() {
    forget_if_stale_at(Path::new(KDAT), Path::new(BOOT_RECORD), Path::new(BOOT_ID));
}

fn forget_if_stale_at(kdat: &Path, record: &Path, boot_id: &Path) {
    let Ok(made_in) = std::fs::read_to_string(record) else {
        return;
    };
    let Ok(now) = std::fs::read_to_string(boot_id) else {
        return;
    };
    if made_in.trim() == now.trim() {
        return;
    }
    for f in [kdat, record] {
        if let Err(e) = std::fs::remove_file(f) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(file = %f.display(), error = %e, "cannot remove a stale CRIU kernel-feature cache");
                return;
            }
        }
    }
    info!(
        "removed {} made in an earlier boot; rerun scripts/criu-kdat.sh to cache CRIU's kernel probe again",
        kdat.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_from_another_boot_is_removed_one_from_this_boot_kept() {
        let d = tempfile::tempdir().unwrap();
        let (kdat, record, boot) = (
            d.path().join("kdat"),
            d.path().join("rec"),
            d.path().join("boot"),
        );
        std::fs::write(&boot, "b1\n").unwrap();
        std::fs::write(&kdat, "x").unwrap();
        std::fs::write(&record, "b1\n").unwrap();
        forget_if_stale_at(&kdat, &record, &boot);
        assert!(kdat.exists() && record.exists(), "same boot: kept");
        std::fs::write(&boot, "b2\n").unwrap();
        forget_if_stale_at(&kdat, &record, &boot);
        assert!(!kdat.exists() && !record.exists(), "other boot: removed");
        std::fs::write(&kdat, "x").unwrap();
        forget_if_stale_at(&kdat, &record, &boot);
        assert!(
            kdat.exists(),
            "no record (CRIU's own cache on a tmpfs): untouched"
        );
    }
}
