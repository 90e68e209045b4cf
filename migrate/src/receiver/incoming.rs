//! What a migration has brought so far, in the receiver's tmpfs: page blocks
//! (content-addressed), page manifests, CRIU files, and the speculative pages
//! images laid out from the source's layout hint.

use std::{
    collections::HashMap,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    time::Instant,
};

use mose_wire::{BlockHash, BlockStore, BLOCK_SIZE};
use tracing::info;
use xxhash_rust::xxh3::Xxh3;

use crate::error::{InPhase, MigrateError, Phase, Result};

/// A file being received: where it goes and the running hash of its bytes.
pub struct FileSink {
    pub name: String,
    /// The announced size in bytes (the state machine holds the data to it).
    pub size: u64,
    /// The announced xxh3-128, hex.
    pub hash: String,
    pub file: std::fs::File,
    pub hasher: Xxh3,
}

pub struct Incoming {
    pub dir: PathBuf,
    pub blocks: BlockStore,
    pub manifests: Vec<(String, Vec<BlockHash>)>,
    /// Speculative pages images written from the source's layout hint: the
    /// hash of what each holds at every index.
    pub speculative: HashMap<String, Vec<BlockHash>>,
    /// Where blocks not held when a speculative image was written belong:
    /// written in place as they arrive.
    pub pending: HashMap<BlockHash, Vec<(String, usize)>>,
    pub spec_files: HashMap<String, std::fs::File>,
    /// Received files by name (image.tar is imported, not kept).
    pub files: HashMap<String, PathBuf>,
    /// The file being received.
    pub current: Option<FileSink>,
    /// File bytes received.
    pub bytes: u64,
}

/// A file name from the source, refused unless it is one plain name.
pub fn safe_name(name: &str) -> Result<&str> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') || name.len() > 200 {
        return Err(MigrateError::local(
            Phase::Transfer,
            format!("refusing file name {name:?} from the source"),
        ));
    }
    Ok(name)
}

impl Incoming {
    /// An empty migration directory at `dir`.
    pub fn create(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(dir.join("files"))
            .in_phase(Phase::Transfer, &format!("creating {}", dir.display()))?;
        Ok(Incoming {
            dir,
            blocks: BlockStore::new(),
            manifests: Vec::new(),
            speculative: HashMap::new(),
            pending: HashMap::new(),
            spec_files: HashMap::new(),
            files: HashMap::new(),
            current: None,
            bytes: 0,
        })
    }

    /// Stores a received block, and writes it wherever a speculative image
    /// waits for it.
    pub fn add_block(&mut self, hash: BlockHash, data: &[u8]) -> Result<()> {
        self.blocks
            .insert(hash, data)
            .in_phase(Phase::Transfer, "storing a page block")?;
        let Some(places) = self.pending.remove(&hash) else {
            return Ok(());
        };
        for (image, i) in places {
            if let (Some(f), Some(w)) = (
                self.spec_files.get(&image),
                self.speculative.get_mut(&image),
            ) {
                f.write_all_at(data, (i * BLOCK_SIZE) as u64)
                    .in_phase(Phase::Transfer, &format!("writing into {image}"))?;
                w[i] = hash;
            }
        }
        Ok(())
    }

    /// Writes the pages image the source predicts, from the blocks held now
    /// (missing ones as zeros), so that at the freeze only the differences
    /// are written. The prediction is only a head start: the final manifest
    /// decides.
    pub fn speculate(&mut self, image: &str, hashes: &[BlockHash]) -> Result<()> {
        let image = safe_name(image)?.to_string();
        let t = Instant::now();
        let dir = self.dir.join("speculative");
        let path = dir.join(&image);
        let mut file = std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::File::create(&path))
            .in_phase(Phase::Rounds, &format!("creating {}", path.display()))?;
        let written = self
            .blocks
            .write_speculative(hashes, &mut file)
            .in_phase(Phase::Rounds, &format!("laying out {image}"))?;
        info!(
            image,
            pages = hashes.len(),
            ms = t.elapsed().as_secs_f64() * 1000.0,
            "speculative pages image written"
        );
        // a newer layout replaces an older one of the same image
        for v in self.pending.values_mut() {
            v.retain(|(n, _)| *n != image);
        }
        for (i, (want, got)) in hashes.iter().zip(written.iter()).enumerate() {
            if want != got {
                self.pending
                    .entry(*want)
                    .or_default()
                    .push((image.clone(), i));
            }
        }
        self.spec_files.insert(image.clone(), file);
        self.speculative.insert(image, written);
        Ok(())
    }

    /// Turns a speculative image into the final one at `out` by rewriting
    /// only the blocks that differ from `hashes`. Returns how many were
    /// rewritten, or `None` (and leaves it) when there is no speculative
    /// image or too much differs (over 25%) for patching to pay off.
    pub fn patch_speculative(
        &self,
        name: &str,
        hashes: &[BlockHash],
        out: &Path,
    ) -> Result<Option<usize>> {
        let (Some(written), Some(file)) = (self.speculative.get(name), self.spec_files.get(name))
        else {
            return Ok(None);
        };
        let diffs: Vec<usize> = (0..hashes.len())
            .filter(|&i| written.get(i) != Some(&hashes[i]))
            .collect();
        if diffs.len() * 4 > hashes.len() {
            return Ok(None);
        }
        let what = format!("patching {name}");
        file.set_len((hashes.len() * BLOCK_SIZE) as u64)
            .in_phase(Phase::Restore, &what)?;
        for &i in &diffs {
            let b = self.blocks.block(hashes[i]).ok_or_else(|| {
                MigrateError::local(
                    Phase::Restore,
                    format!(
                        "rebuilding {name}: page block #{i} ({:032x}) was never received",
                        hashes[i]
                    ),
                )
            })?;
            file.write_all_at(b, (i * BLOCK_SIZE) as u64)
                .in_phase(Phase::Restore, &what)?;
        }
        std::fs::rename(self.dir.join("speculative").join(name), out)
            .in_phase(Phase::Restore, &format!("placing {name}"))?;
        Ok(Some(diffs.len()))
    }
}
