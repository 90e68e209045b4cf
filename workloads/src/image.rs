//! A small, deterministic OCI image builder.
//!
//! MOSE's testbed needs images for its own workloads (the state service,
//! redis) on machines without a registry or Docker. The builder writes a
//! single uncompressed layer from host files and puts it into an OCI archive
//! that `ctr images import` accepts. Dynamically linked binaries are copied
//! together with every shared library `ldd` resolves (and the loader), at
//! the same paths as on the host, so glibc-dynamic binaries run unchanged.
//!
//! Output is deterministic (sorted entries, mtime 0, uid/gid 0, no
//! timestamps in the config) so that the same inputs give the same digests
//! and containerd does not re-import identical content.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Host path of the static busybox added when [`ImageSpec::busybox`] is set.
pub const BUSYBOX: &str = "/bin/busybox";

/// Default `PATH` put into an image's environment when none is given.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Bump when the layout produced for the same spec changes (cache key).
const BUILDER_VERSION: u32 = 1;

/// What goes into an image.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImageSpec {
    /// Image reference, e.g. `localhost/mose/state-service:latest`.
    pub name: String,
    /// Host files copied into the image: `(host_path, path_in_image)`.
    pub files: Vec<(PathBuf, String)>,
    /// Files given by content: `(path_in_image, content, mode)`.
    pub contents: Vec<(String, Vec<u8>, u32)>,
    /// Host executables copied to the same path, with their shared libraries
    /// and dynamic loader (as resolved by `ldd`).
    pub binaries: Vec<PathBuf>,
    /// Host executables whose shared libraries and loader (only) are added,
    /// for binaries placed elsewhere via [`ImageSpec::files`].
    pub libs_of: Vec<PathBuf>,
    /// Directories to create: `(path_in_image, mode)`.
    pub dirs: Vec<(String, u32)>,
    /// Symlinks: `(path_in_image, target)`.
    pub symlinks: Vec<(String, String)>,
    /// Environment (`KEY=value`); [`DEFAULT_PATH`] is added if no `PATH=` is given.
    pub env: Vec<String>,
    /// Image entrypoint.
    pub entrypoint: Vec<String>,
    /// Image cmd (arguments to the entrypoint).
    pub cmd: Vec<String>,
    /// Working directory (default `/`).
    pub workdir: Option<String>,
    /// Add the host's static `/bin/busybox` plus one symlink per applet in `/bin`.
    pub busybox: bool,
}

/// One entry of the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir(u32),
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

/// Normalizes an image path to the tar form (`a/b`, no leading slash).
fn norm(path: &str) -> Result<String> {
    let mut parts = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => bail!("path {path:?} must not contain `..`"),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        bail!("empty image path {path:?}");
    }
    Ok(parts.join("/"))
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Shared libraries and loader of `binary` as resolved by `ldd` (absolute
/// host paths). A static binary has none.
pub fn shared_libs(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("running ldd {}", binary.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", binary.display(), stderr.trim());
    }
    parse_ldd(&stdout).with_context(|| format!("ldd {}", binary.display()))
}

/// Parses `ldd` output into the absolute paths it names.
fn parse_ldd(out: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("statically linked") {
            continue;
        }
        if line.contains("=> not found") {
            bail!("missing shared library: {line}");
        }
        // `libx.so => /path/libx.so (0x..)` or `/lib64/ld-linux.so.2 (0x..)`.
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// Applets of the host busybox (`busybox --list`).
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

/// Host files that feed the layer (for the cache key): explicit files,
/// binaries and their libraries, busybox.
fn host_inputs(spec: &ImageSpec) -> Result<Vec<(PathBuf, String)>> {
    let mut v: Vec<(PathBuf, String)> = spec.files.clone();
    for bin in &spec.binaries {
        let abs = absolute_host_path(bin)?;
        v.push((abs.clone(), abs.display().to_string()));
    }
    for bin in spec.binaries.iter().chain(&spec.libs_of) {
        for lib in shared_libs(&absolute_host_path(bin)?)? {
            v.push((lib.clone(), lib.display().to_string()));
        }
    }
    if spec.busybox {
        v.push((PathBuf::from(BUSYBOX), BUSYBOX.to_string()));
    }
    Ok(v)
}

fn absolute_host_path(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir().context("current dir")?.join(p))
    }
}

/// Collects all layer entries, keyed by normalized path (sorted).
fn layer_entries(spec: &ImageSpec) -> Result<BTreeMap<String, Entry>> {
    let mut m: BTreeMap<String, Entry> = BTreeMap::new();
    for (d, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("run", 0o755),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("var", 0o755),
    ] {
        m.insert(d.to_string(), Entry::Dir(mode));
    }
    let text = |s: &str| Entry::File {
        data: s.as_bytes().to_vec(),
        mode: 0o644,
    };
    m.insert(
        "etc/passwd".into(),
        text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"),
    );
    m.insert("etc/group".into(), text("root:x:0:\nnogroup:x:65534:\n"));
    m.insert("etc/hosts".into(), text("127.0.0.1 localhost\n"));

    if spec.busybox {
        let data = fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX}"))?;
        m.insert("bin/busybox".into(), Entry::File { data, mode: 0o755 });
        for applet in busybox_applets()? {
            m.entry(format!("bin/{applet}"))
                .or_insert_with(|| Entry::Symlink("busybox".into()));
        }
    }
    let add_file = |m: &mut BTreeMap<String, Entry>, host: &Path, dest: &str| -> Result<()> {
        // fs::read follows symlinks: the image gets the content at that path.
        let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        let meta = fs::metadata(host).with_context(|| format!("stat {}", host.display()))?;
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
        m.insert(norm(dest)?, Entry::File { data, mode });
        Ok(())
    };
    for bin in spec.binaries.iter().chain(&spec.libs_of) {
        for lib in shared_libs(&absolute_host_path(bin)?)? {
            add_file(&mut m, &lib, &lib.display().to_string())?;
        }
    }
    for bin in &spec.binaries {
        let abs = absolute_host_path(bin)?;
        add_file(&mut m, &abs, &abs.display().to_string())?;
    }
    for (host, dest) in &spec.files {
        add_file(&mut m, host, dest)?;
    }
    for (dest, data, mode) in &spec.contents {
        m.insert(
            norm(dest)?,
            Entry::File {
                data: data.clone(),
                mode: *mode,
            },
        );
    }
    for (d, mode) in &spec.dirs {
        m.insert(norm(d)?, Entry::Dir(*mode));
    }
    for (link, target) in &spec.symlinks {
        m.insert(norm(link)?, Entry::Symlink(target.clone()));
    }
    // Every parent directory must exist as an entry (before its children;
    // the BTreeMap order guarantees a prefix sorts first).
    let paths: Vec<String> = m.keys().cloned().collect();
    for p in paths {
        let mut cur = p.as_str();
        while let Some((parent, _)) = cur.rsplit_once('/') {
            match m.get(parent) {
                Some(Entry::Dir(_)) => {}
                Some(other) => bail!("{parent} is needed as a directory but is {other:?}"),
                None => {
                    m.insert(parent.to_string(), Entry::Dir(0o755));
                }
            }
            cur = parent;
        }
    }
    Ok(m)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Builds the uncompressed layer tar.
fn build_layer(spec: &ImageSpec) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, e) in layer_entries(spec)? {
        match e {
            Entry::Dir(mode) => {
                let mut h = header(tar::EntryType::Directory, mode, 0);
                b.append_data(&mut h, format!("{path}/"), std::io::empty())
            }
            Entry::File { data, mode } => {
                let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
                b.append_data(&mut h, &path, &data[..])
            }
            Entry::Symlink(target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                b.append_link(&mut h, &path, &target)
            }
        }
        .with_context(|| format!("adding {path} to layer"))?;
    }
    b.into_inner().context("finishing layer tar")
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Builds the whole OCI archive (oci-layout, index.json, blobs) in memory.
pub fn build_archive(spec: &ImageSpec) -> Result<Vec<u8>> {
    if spec.name.is_empty() {
        bail!("image spec has no name");
    }
    let layer = build_layer(spec)?;
    let layer_digest = sha256_hex(&layer);
    let arch = oci_arch();
    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let mut cfg = serde_json::Map::new();
    cfg.insert("Env".into(), json!(env));
    if !spec.entrypoint.is_empty() {
        cfg.insert("Entrypoint".into(), json!(spec.entrypoint));
    }
    if !spec.cmd.is_empty() {
        cfg.insert("Cmd".into(), json!(spec.cmd));
    }
    cfg.insert(
        "WorkingDir".into(),
        json!(spec.workdir.clone().unwrap_or_else(|| "/".into())),
    );
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": cfg,
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
        "history": [{ "created_by": "mose-workloads image builder" }]
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
                "org.opencontainers.image.ref.name": spec.name,
                "io.containerd.image.name": spec.name
            }
        }]
    }))?;

    let mut b = tar::Builder::new(Vec::new());
    let file = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]| -> Result<()> {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, path, data)
            .with_context(|| format!("adding {path} to archive"))
    };
    file(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    for d in ["blobs/", "blobs/sha256/"] {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, d, std::io::empty())
            .with_context(|| format!("adding {d} to archive"))?;
    }
    let mut blobs = [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ];
    blobs.sort_by(|a, b| a.0.cmp(b.0));
    for (digest, data) in blobs {
        file(&mut b, &format!("blobs/sha256/{digest}"), data)?;
    }
    file(&mut b, "index.json", &index)?;
    b.into_inner().context("finishing OCI archive")
}

/// Unpacks the image's single layer into `dir` as a root filesystem, for
/// runtimes driven without containerd (a bundle's `rootfs`). `dir` must not
/// hold another tree; it is created when missing.
pub fn unpack_rootfs(spec: &ImageSpec, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let layer = build_layer(spec)?;
    let mut a = tar::Archive::new(&layer[..]);
    a.set_preserve_permissions(true);
    a.unpack(dir)
        .with_context(|| format!("unpacking {} into {}", spec.name, dir.display()))
}

/// Builds the archive and writes it to `path` (atomically: temp + rename).
pub fn write_archive(spec: &ImageSpec, path: &Path) -> Result<()> {
    let data = build_archive(spec)?;
    write_atomic(path, &data)
}

/// A content hash of everything that determines the archive: the spec and
/// the content of every host input file. Equal keys give equal archives.
pub fn cache_key(spec: &ImageSpec) -> Result<String> {
    let mut h = Sha256::new();
    h.update(BUILDER_VERSION.to_le_bytes());
    h.update(serde_json::to_vec(spec).context("serializing spec")?);
    for (host, dest) in host_inputs(spec)? {
        let data = fs::read(&host).with_context(|| format!("reading {}", host.display()))?;
        h.update(dest.as_bytes());
        h.update((data.len() as u64).to_le_bytes());
        h.update(&data);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Returns an archive of `spec` in `cache_dir`, named after the image and its
/// [`cache_key`]; builds it only if no archive with that key exists yet.
pub fn cached_archive(spec: &ImageSpec, cache_dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(cache_dir).with_context(|| format!("creating {}", cache_dir.display()))?;
    let key = cache_key(spec)?;
    let stem: String = spec
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let path = cache_dir.join(format!("{stem}-{}.tar", &key[..16]));
    if !path.exists() {
        write_archive(spec, &path)?;
        prune_cache(cache_dir, &stem, &path);
    }
    Ok(path)
}

/// Archives of one image kept in the cache (every rebuilt binary gives a
/// new key; without pruning the cache grows by an image per build).
const KEEP_PER_IMAGE: usize = 3;

/// Removes all but the newest [`KEEP_PER_IMAGE`] archives named `<stem>-*.tar`
/// (never `keep`). Best effort: a failure only leaves files behind.
fn prune_cache(dir: &Path, stem: &str, keep: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let prefix = format!("{stem}-");
    let mut old: Vec<(std::time::SystemTime, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".tar"))
                && p != keep
        })
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    old.sort();
    let excess = (old.len() + 1).saturating_sub(KEEP_PER_IMAGE);
    for (_, p) in old.into_iter().take(excess) {
        let _ = fs::remove_file(p);
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Unique per process and call: parallel tests may build the same archive.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Imports the OCI archive at `archive` into containerd at `address`
/// (namespace `namespace`) with `ctr images import`.
pub fn ctr_import(address: &Path, namespace: &str, archive: &Path) -> Result<()> {
    let out = Command::new("ctr")
        .arg("-a")
        .arg(address)
        .arg("-n")
        .arg(namespace)
        .args(["images", "import"])
        .arg(archive)
        .output()
        .context("running ctr images import")?;
    if !out.status.success() {
        bail!(
            "ctr images import {} failed: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn entries(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut m = BTreeMap::new();
        let mut ar = tar::Archive::new(archive);
        for e in ar.entries().expect("entries") {
            let mut e = e.expect("entry");
            let name = e.path().expect("path").display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("read");
            m.insert(name, data);
        }
        m
    }

    fn spec() -> ImageSpec {
        ImageSpec {
            name: "localhost/mose/unit:latest".into(),
            contents: vec![("/etc/app/conf".into(), b"x=1\n".to_vec(), 0o644)],
            binaries: vec![PathBuf::from("/bin/true")],
            dirs: vec![("/data".into(), 0o755)],
            symlinks: vec![("/usr/local/bin/t".into(), "/bin/true".into())],
            entrypoint: vec!["/bin/true".into()],
            busybox: true,
            ..Default::default()
        }
    }

    #[test]
    fn ldd_output_is_parsed() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n\t/lib64/ld-linux-x86-64.so.2 (0x2)\n";
        let libs = parse_ldd(out).expect("parse");
        assert_eq!(
            libs,
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }

    #[test]
    fn archive_is_deterministic_and_complete() {
        let s = spec();
        let a = build_archive(&s).expect("build");
        let b = build_archive(&s).expect("build again");
        assert_eq!(sha256_hex(&a), sha256_hex(&b), "same spec, same bytes");
        let top = entries(&a);
        let index = String::from_utf8_lossy(&top["index.json"]).into_owned();
        assert!(index.contains("localhost/mose/unit:latest"));
        assert!(top.contains_key("oci-layout"));
        // The layer is the largest blob; it holds the binary, its libc and the loader.
        let layer = top
            .iter()
            .filter(|(k, _)| k.starts_with("blobs/sha256/"))
            .max_by_key(|(_, v)| v.len())
            .map(|(_, v)| v.clone())
            .expect("layer");
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(&layer[..]);
        for e in ar.entries().expect("entries") {
            names.push(
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string(),
            );
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "layer entries are sorted");
        for want in [
            "bin/true",
            "bin/busybox",
            "bin/sh",
            "data/",
            "etc/app/conf",
            "usr/local/bin/t",
            "lib64/ld-linux-x86-64.so.2",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        assert!(names.iter().any(|n| n.ends_with("libc.so.6")));
    }

    #[test]
    fn cache_key_follows_content() {
        let s = spec();
        let k1 = cache_key(&s).expect("key");
        assert_eq!(k1, cache_key(&s).expect("key"));
        let mut s2 = s.clone();
        s2.contents[0].1 = b"x=2\n".to_vec();
        assert_ne!(k1, cache_key(&s2).expect("key"));
        let dir = tempfile_dir();
        let p = cached_archive(&s, &dir).expect("cached");
        assert_eq!(p, cached_archive(&s, &dir).expect("cached again"));
        let _ = fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        std::env::temp_dir().join(format!("mose-img-unit-{}", std::process::id()))
    }

    #[test]
    fn paths_are_normalized() {
        assert_eq!(norm("/a//b/./c").expect("norm"), "a/b/c");
        assert!(norm("/a/../b").is_err());
        assert!(norm("/").is_err());
    }
}
