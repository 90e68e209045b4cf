//! Assembling the CRIU image directory from what arrived: the received files
//! placed, the pages images written from the block store (patched from the
//! speculative layout when it was close), or for a lazy restore written
//! sparse with the lazy pages left out.

use std::{os::unix::fs::FileExt, path::PathBuf};

use mose_wire::{blocks::zero_hash, BlockHash, BLOCK_SIZE, LAZY_SLOT};
use tracing::info;

use super::incoming::{safe_name, Incoming};
use crate::{
    error::{InPhase, MigrateError, Phase, Result},
    lazy::LazyLayout,
};

/// The assembled image directory, the rootfs changes if any, and for a lazy
/// restore which pages are left out.
pub struct Assembled {
    pub images: PathBuf,
    pub rootfs_tar: Option<PathBuf>,
    pub layout: Option<LazyLayout>,
}

fn fail(what: String) -> MigrateError {
    MigrateError::local(Phase::Restore, what)
}

/// Places the received files and writes the pages images; `lazy` leaves
/// CRIU's lazy pages out (holes in a sparse file: CRIU skips them and never
/// reads there).
pub fn assemble(inc: &mut Incoming, lazy: bool) -> Result<Assembled> {
    let images = inc.dir.join("images");
    std::fs::create_dir_all(&images).in_phase(Phase::Restore, "creating the image directory")?;
    let rootfs_tar = inc.files.remove("rootfs.tar");
    for (name, path) in &inc.files {
        std::fs::rename(path, images.join(name))
            .in_phase(Phase::Restore, &format!("placing {name}"))?;
    }
    let layout = if lazy {
        let layout = LazyLayout::read(&images).in_phase(Phase::Restore, "reading the pagemaps")?;
        for (name, hashes) in &inc.manifests {
            write_sparse(inc, &images, name, hashes, &layout)?;
        }
        Some(layout)
    } else {
        if inc.manifests.iter().any(|(_, h)| h.contains(&LAZY_SLOT)) {
            return Err(fail(
                "the source left pages behind, but this is not a post-copy migration".into(),
            ));
        }
        for (name, hashes) in &inc.manifests {
            write_full(inc, &images, name, hashes)?;
        }
        None
    };
    if !images.join("inventory.img").exists() {
        return Err(fail("the received checkpoint has no inventory.img".into()));
    }
    Ok(Assembled {
        images,
        rootfs_tar,
        layout,
    })
}

/// A pages image in full: patched from its speculative layout, or straight
/// from the block store into the file (one copy, no staging buffer).
fn write_full(
    inc: &Incoming,
    images: &std::path::Path,
    name: &str,
    hashes: &[BlockHash],
) -> Result<()> {
    let name = safe_name(name)?;
    let path = images.join(name);
    if let Some(patched) = inc.patch_speculative(name, hashes, &path)? {
        info!(
            image = name,
            pages = hashes.len(),
            patched,
            "speculative pages image patched"
        );
        return Ok(());
    }
    let mut file = std::fs::File::create(&path)
        .in_phase(Phase::Restore, &format!("creating {}", path.display()))?;
    inc.blocks
        .write_to(hashes, &mut file)
        .in_phase(Phase::Restore, &format!("rebuilding {name}"))
}

/// A pages image with CRIU's lazy slots left as holes.
fn write_sparse(
    inc: &Incoming,
    images: &std::path::Path,
    name: &str,
    hashes: &[BlockHash],
    layout: &LazyLayout,
) -> Result<()> {
    let name = safe_name(name)?;
    let path = images.join(name);
    let what = format!("writing {}", path.display());
    let file = std::fs::File::create(&path).in_phase(Phase::Restore, &what)?;
    file.set_len((hashes.len() * BLOCK_SIZE) as u64)
        .in_phase(Phase::Restore, &what)?;
    let lazy_slots = layout.lazy_slots.get(name);
    let zero = zero_hash();
    for (i, h) in hashes.iter().enumerate() {
        if lazy_slots.and_then(|l| l.get(i)).copied().unwrap_or(false) {
            continue;
        }
        if *h == LAZY_SLOT {
            return Err(fail(format!(
                "{name}: page #{i} was left behind but CRIU restores it eagerly"
            )));
        }
        if *h == zero {
            continue; // a hole reads as zeros
        }
        let b = inc.blocks.block(*h).ok_or_else(|| {
            fail(format!(
                "rebuilding {name}: page block #{i} ({h:032x}) was never received"
            ))
        })?;
        file.write_all_at(b, (i * BLOCK_SIZE) as u64)
            .in_phase(Phase::Restore, &what)?;
    }
    Ok(())
}
