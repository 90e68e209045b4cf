//! Builds a tiny OCI image (Debian's static busybox) as an OCI archive tar.
//!
//! The archive is cached in the cargo target directory so it is built once
//! per test run (concurrent builders write a temp file and rename it).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Image reference under which the test image is imported.
pub const TEST_IMAGE_REF: &str = "localhost/mose-test/busybox:latest";

/// Path of the host's static busybox.
pub const BUSYBOX: &str = "/bin/busybox";

/// Cache format version: bump when the image layout changes.
const CACHE_VERSION: u32 = 1;

fn sha256_hex(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

/// Lists the busybox applets (`busybox --list`).
fn busybox_applets() -> Result<Vec<String>> {
    let out = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .with_context(|| format!("running {BUSYBOX} --list"))?;
    if !out.status.success() {
        bail!("{BUSYBOX} --list failed: {:?}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "busybox" && !s.contains('/'))
        .map(String::from)
        .collect())
}

fn append_file<W: Write>(
    b: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    data: &[u8],
) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(mode);
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    b.append_data(&mut h, path, data)
        .with_context(|| format!("adding {path} to tar"))?;
    Ok(())
}

fn append_dir<W: Write>(b: &mut tar::Builder<W>, path: &str, mode: u32) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(mode);
    h.set_size(0);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    b.append_data(&mut h, path, std::io::empty())
        .with_context(|| format!("adding dir {path} to tar"))?;
    Ok(())
}

/// Builds the uncompressed rootfs layer tar.
fn build_layer() -> Result<Vec<u8>> {
    let busybox = fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX}"))?;
    let mut b = tar::Builder::new(Vec::new());
    for (d, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("proc", 0o555),
        ("dev", 0o755),
        ("sys", 0o555),
        ("root", 0o700),
        ("var", 0o755),
        ("run", 0o755),
    ] {
        append_dir(&mut b, d, mode)?;
    }
    append_file(&mut b, "bin/busybox", 0o755, &busybox)?;
    for applet in busybox_applets()? {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .with_context(|| format!("adding symlink for {applet}"))?;
    }
    append_file(
        &mut b,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    append_file(&mut b, "etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;
    b.into_inner().context("finishing layer tar")
}

/// Builds the whole OCI archive (oci-layout, index.json, blobs) in memory.
pub fn build_oci_archive() -> Result<Vec<u8>> {
    let layer = build_layer()?;
    let layer_digest = sha256_hex(&layer);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/"
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
        "history": [{ "created_by": "mose-tests image builder" }]
    }))?;
    let config_digest = sha256_hex(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config.len()
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer.len()
        }]
    }))?;
    let manifest_digest = sha256_hex(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "platform": { "architecture": arch, "os": "linux" },
            "annotations": {
                "org.opencontainers.image.ref.name": TEST_IMAGE_REF,
                "io.containerd.image.name": TEST_IMAGE_REF
            }
        }]
    }))?;

    let mut b = tar::Builder::new(Vec::new());
    append_file(
        &mut b,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    append_dir(&mut b, "blobs", 0o755)?;
    append_dir(&mut b, "blobs/sha256", 0o755)?;
    for (digest, data) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        append_file(&mut b, &format!("blobs/sha256/{digest}"), 0o644, data)?;
    }
    append_file(&mut b, "index.json", 0o644, &index)?;
    b.into_inner().context("finishing OCI archive")
}

/// Returns the cached OCI archive path, building it on first use.
pub fn cached_oci_archive() -> Result<PathBuf> {
    let dir = crate::target_dir().join("mose-tests");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("busybox-oci-v{CACHE_VERSION}.tar"));
    if path.exists() {
        return Ok(path);
    }
    let data = build_oci_archive()?;
    write_atomic(&path, &data)?;
    Ok(path)
}

/// Writes through a temporary file unique to this call, so that tests building
/// the same image in parallel threads of one process never rename each
/// other's temporary file away.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_has_oci_layout_and_named_index() {
        let data = build_oci_archive().expect("build");
        let mut names = Vec::new();
        let mut index = String::new();
        let mut ar = tar::Archive::new(&data[..]);
        for e in ar.entries().expect("entries") {
            let mut e = e.expect("entry");
            let name = e.path().expect("path").display().to_string();
            if name == "index.json" {
                std::io::Read::read_to_string(&mut e, &mut index).expect("read index");
            }
            names.push(name);
        }
        assert!(names.contains(&"oci-layout".to_string()));
        assert_eq!(
            names
                .iter()
                .filter(|n| n.starts_with("blobs/sha256/"))
                .count(),
            3
        );
        assert!(index.contains(TEST_IMAGE_REF));
    }
}
