//! One container managed by the shim: its bundle, rootfs, OCI runtime, init
//! and exec processes, and the operations containerd asks of them.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use containerd_shim::{
    io::Stdio,
    mount::{mount_rootfs, umount_recursive},
    protos::{api::Mount, protobuf::well_known_types::any::Any},
};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{
    error::{Error, Result},
    oci::{BundleSpec, ExecSpec},
    options::{CheckpointOptions, RuntimeOptions},
    process::{Process, State},
    runtime::{read_pid_file, InitArgs, OciRuntime},
    stdio::{IoOwner, PendingStdio},
};

/// File in the bundle recording how the runtime was driven, so the shim's
/// `delete` action can clean up after a crashed shim server.
pub const OPTIONS_FILE: &str = "mose-runtime.json";

/// What the `delete` action needs to find the container again.
#[derive(Debug, Serialize, Deserialize)]
pub struct PersistedRuntime {
    pub binary: String,
    pub root: PathBuf,
    pub systemd_cgroup: bool,
}

/// Default state root of the OCI runtime: one per containerd instance and
/// namespace, so several containerd daemons on one host (the two-node
/// testbed) never see each other's containers, even with equal ids.
pub fn runtime_root(opts: &RuntimeOptions, containerd_address: &str, namespace: &str) -> PathBuf {
    let base = if opts.root.is_empty() {
        PathBuf::from("/run/mose/runc").join(format!("{:016x}", fnv1a(containerd_address)))
    } else {
        PathBuf::from(&opts.root)
    };
    base.join(namespace)
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

pub struct Container {
    pub id: String,
    /// containerd namespace the container lives in.
    pub namespace: String,
    pub bundle: PathBuf,
    pub runtime: OciRuntime,
    pub options: RuntimeOptions,
    pub init: Process,
    pub execs: HashMap<String, Process>,
    /// Restore from this CRIU image at Start instead of starting fresh.
    pub restore_from: Option<PathBuf>,
    /// The container shares the host's pid namespace: when its init exits the
    /// kernel does not kill the rest, so the shim must.
    pub shares_host_pids: bool,
    /// OOM kills of the container's memory cgroup (reported at the init's exit
    /// when no notification did).
    pub oom: Option<crate::oom::OomCounter>,
    /// The container has a network namespace runc creates (see `loopback`).
    own_netns: bool,
    /// Its service address, when annotated (see `crate::network`).
    pub network: Option<crate::network::ContainerNetwork>,
    /// A Kubernetes pod's container: the pod's sandbox id (the pod's
    /// address moves with a migration of its containers).
    pub pod_sandbox: Option<String>,
    /// The pod's interface is held down for a dump (source side).
    pod_held_down: bool,
    /// A pulled container's open hand-over with the node agent, until the
    /// restore at Start reports to it (see `crate::pod_migration`).
    pub pod_pull: Option<crate::pod_migration::PodPull>,
    rootfs_mounted: bool,
    /// A lazy dump whose page server still serves the paused container's
    /// memory (source side of a post-copy migration).
    lazy_dump: Option<crate::runtime::LazyDump>,
}

/// Validated inputs of a Create request.
pub struct CreateArgs<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    pub rootfs: &'a [Mount],
    pub stdio: Stdio,
    pub checkpoint: &'a str,
    pub options: RuntimeOptions,
    pub address: &'a str,
    pub namespace: &'a str,
}

impl Container {
    /// Validates the bundle, mounts the rootfs and creates the container with
    /// the OCI runtime (or prepares a restore). Any failure undoes what was done.
    pub async fn create(args: CreateArgs<'_>) -> Result<Container> {
        let mut spec = read_spec(args.bundle)?;
        let identity = crate::network::identity(&spec)?;
        let restore = !args.checkpoint.is_empty();
        let mut changed = attach_criu_config(args.bundle, &mut spec)?;
        if restore {
            changed |= crate::cgroup_path::own_cgroup(&mut spec, args.id)?;
        }
        let network = match identity {
            Some(identity) => Some(
                crate::network::prepare(&mut spec, identity, args.bundle, args.id, restore).await?,
            ),
            None => None,
        };
        if changed || network.is_some() {
            if let Err(e) = write_spec(args.bundle, &spec) {
                if let Some(n) = &network {
                    n.release().await;
                }
                return Err(e);
            }
        }
        let (rootfs, checkpoint) = (args.rootfs, args.checkpoint);
        let mut c = match Self::new(args, &spec) {
            Ok(c) => c,
            Err(e) => {
                if let Some(n) = &network {
                    n.release().await;
                }
                return Err(e);
            }
        };
        c.network = network;
        let res = c.prepare(rootfs, &spec, checkpoint).await;
        if let Err(e) = res {
            c.unmount_rootfs();
            if let Some(n) = &c.network {
                n.release().await;
            }
            return Err(e);
        }
        Ok(c)
    }

    /// The container's record (runtime settings persisted in the bundle).
    fn new(args: CreateArgs<'_>, spec: &BundleSpec) -> Result<Container> {
        let runtime = OciRuntime {
            binary: args.options.binary().to_string(),
            root: runtime_root(&args.options, args.address, args.namespace),
            systemd_cgroup: args.options.systemd_cgroup,
            log_dir: args.bundle.to_path_buf(),
        };
        std::fs::create_dir_all(&runtime.root).map_err(Error::io(format!(
            "create runtime root {}",
            runtime.root.display()
        )))?;
        persist_runtime(args.bundle, &runtime)?;
        Ok(Container {
            id: args.id.to_string(),
            namespace: args.namespace.to_string(),
            bundle: args.bundle.to_path_buf(),
            runtime,
            options: args.options,
            init: Process::new(args.stdio),
            execs: HashMap::new(),
            restore_from: None,
            shares_host_pids: !has_pid_namespace(spec),
            oom: None,
            own_netns: crate::loopback::has_own_netns(spec),
            network: None,
            pod_sandbox: crate::pod_migration::pod_sandbox(spec),
            pod_held_down: false,
            pod_pull: None,
            rootfs_mounted: false,
            lazy_dump: None,
        })
    }

    /// Mounts the rootfs, then creates the container with the runtime, or
    /// checks the image a restore at Start will use.
    async fn prepare(
        &mut self,
        rootfs: &[Mount],
        spec: &BundleSpec,
        checkpoint: &str,
    ) -> Result<()> {
        let root_path = spec_root(spec, &self.bundle);
        self.mount_rootfs(rootfs, &root_path)?;
        if !root_path.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "container rootfs {} does not exist: the create request carried no rootfs \
                 mounts and the spec's root.path names no directory",
                root_path.display()
            )));
        }
        if !checkpoint.is_empty() {
            let image = PathBuf::from(checkpoint);
            if !image.join("inventory.img").exists() {
                return Err(Error::InvalidArgument(format!(
                    "checkpoint {} holds no CRIU image (inventory.img missing)",
                    image.display()
                )));
            }
            self.restore_from = Some(image);
            return Ok(());
        }
        if let Err(e) = self.create_init().await {
            let _ = self.runtime.delete(&self.id, true).await;
            return Err(e);
        }
        Ok(())
    }

    fn mount_rootfs(&mut self, mounts: &[Mount], root_path: &Path) -> Result<()> {
        if mounts.is_empty() {
            return Ok(());
        }
        let target = self.bundle.join("rootfs");
        std::fs::create_dir_all(&target)
            .map_err(Error::io(format!("create rootfs dir {}", target.display())))?;
        if root_path != target {
            warn!(spec_root = %root_path.display(), "rootfs mounts go to bundle/rootfs, spec names another root");
        }
        for m in mounts {
            self.rootfs_mounted = true;
            mount_rootfs(
                Some(m.type_.as_str()).filter(|s| !s.is_empty()),
                Some(m.source.as_str()).filter(|s| !s.is_empty()),
                &m.options,
                &target,
            )
            .map_err(|e| {
                Error::InvalidArgument(format!(
                    "cannot mount rootfs ({} {} -> {}): {e}",
                    m.type_,
                    m.source,
                    target.display()
                ))
            })?;
        }
        Ok(())
    }

    /// Unmounts the rootfs this shim mounted (idempotent).
    pub fn unmount_rootfs(&mut self) {
        if !self.rootfs_mounted {
            return;
        }
        let target = self.bundle.join("rootfs");
        if let Some(t) = target.to_str() {
            if let Err(e) = umount_recursive(Some(t), libc::MNT_DETACH) {
                warn!(error = %e, "unmount rootfs");
            }
        }
        self.rootfs_mounted = false;
    }

    async fn create_init(&mut self) -> Result<()> {
        let mut pending = PendingStdio::prepare(&self.init.stdio, self.io_owner()).await?;
        let pid_file = self.bundle.join("init.pid");
        let console = pending.console_path();
        let init = InitArgs {
            bundle: &self.bundle,
            pid_file: &pid_file,
            console_socket: console.as_deref(),
            no_pivot_root: self.options.no_pivot_root,
            no_new_keyring: self.options.no_new_keyring,
        };
        let io = pending.take_runtime_io();
        let res = with_console(&pending, self.runtime.create(&self.id, &init, io)).await;
        let console_fd = match res {
            Ok(fd) => fd,
            Err(e) => {
                pending.abort().await;
                return Err(e);
            }
        };
        let pid = read_pid_file(&pid_file)?;
        self.init.io = Some(pending.finish(console_fd).await?);
        self.init.pid = pid;
        if self.own_netns {
            // runc and crun bring the loopback of a network namespace they
            // create up; youki (0.7) leaves it down (127.0.0.1 unreachable)
            if let Err(e) = crate::loopback::bring_up(pid) {
                warn!(id = %self.id, error = %e, "the container's loopback stays down");
            }
        }
        info!(id = %self.id, pid, "container created");
        Ok(())
    }

    /// Starts the init process: `runtime start`, or a CRIU restore when the
    /// container was created from a checkpoint.
    pub async fn start_init(&mut self) -> Result<i32> {
        if self.init.state != State::Created {
            return Err(Error::FailedPrecondition(format!(
                "container {} cannot be started: it is {:?}, not created",
                self.id, self.init.state
            )));
        }
        if let Some(image) = self.restore_from.clone() {
            self.restore(&image).await?;
        } else {
            self.runtime.start(&self.id).await?;
        }
        self.init.state = State::Running;
        Ok(self.init.pid)
    }

    async fn restore(&mut self, image: &Path) -> Result<()> {
        let mut pending =
            PendingStdio::prepare_with(&self.init.stdio, self.io_owner(), true).await?;
        let pid_file = self.bundle.join("init.pid");
        let mut work = self.work_dir("restore", &self.options.criu_work_path.clone())?;
        let console = pending.console_path();
        let init = InitArgs {
            bundle: &self.bundle,
            pid_file: &pid_file,
            console_socket: console.as_deref(),
            no_pivot_root: self.options.no_pivot_root,
            no_new_keyring: self.options.no_new_keyring,
        };
        let lazy = !self.options.lazy_pages_socket.is_empty();
        if lazy {
            // CRIU connects to `lazy-pages.socket` in its work directory
            let link = work.path.join("lazy-pages.socket");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&self.options.lazy_pages_socket, &link).map_err(
                Error::io(format!(
                    "linking {} to the lazy-page handler's socket {}",
                    link.display(),
                    self.options.lazy_pages_socket
                )),
            )?;
        }
        let opts = CheckpointOptions {
            terminal: self.init.stdio.terminal,
            file_locks: true,
            lazy_pages: lazy,
            ..Default::default()
        };
        let io = pending.take_runtime_io();
        // restore with the settings the image was dumped with
        let conf = self.bundle.join(CRIU_CONFIG);
        if conf.exists() {
            let extra = std::fs::read_to_string(image.join(IMAGE_CRIU_CONFIG)).unwrap_or_default();
            let _ = std::fs::write(&conf, extra);
        }
        let started = std::time::Instant::now();
        let res = with_console(
            &pending,
            self.runtime
                .restore(&self.id, &init, &opts, image, &work.path, io),
        )
        .await;
        let restore_ms = started.elapsed().as_secs_f64() * 1e3;
        if conf.exists() {
            let _ = std::fs::write(&conf, "");
        }
        let console_fd = match res {
            Ok(fd) => fd,
            Err(e) => {
                work.keep = true;
                pending.abort().await;
                let _ = self.runtime.delete(&self.id, true).await;
                return Err(e);
            }
        };
        let pid = read_pid_file(&pid_file)?;
        self.init.io = Some(pending.finish(console_fd).await?);
        self.init.pid = pid;
        if self.own_netns {
            if let Err(e) = crate::loopback::bring_up(pid) {
                warn!(id = %self.id, error = %e, "restored container's loopback stays down");
            }
        }
        if let Some(n) = &mut self.network {
            // runc runs no poststart hook after a restore: the hook's work
            if let Err(e) = n.bring_up() {
                let _ = self.runtime.delete(&self.id, true).await;
                return Err(Error::Internal(format!(
                    "container {} was restored, but its service address could not be brought \
                     up and announced, so the restored copy was removed: {e}",
                    self.id
                )));
            }
        }
        info!(id = %self.id, pid, image = %image.display(), restore_ms, "container restored");
        Ok(())
    }

    /// Dumps the container to `path` (or the image path the options name).
    pub async fn checkpoint(&mut self, path: &str, mut opts: CheckpointOptions) -> Result<()> {
        if self.lazy_dump_running() {
            return Err(Error::FailedPrecondition(format!(
                "container {} is being dumped lazily (CRIU's page server still serves its \
                 memory): finish that dump first",
                self.id
            )));
        }
        if self.init.is_stopped() || self.init.state == State::Created {
            return Err(Error::FailedPrecondition(format!(
                "cannot checkpoint container {}: it is not running",
                self.id
            )));
        }
        // what the runtime cannot dump is refused before anything is written
        let caps = crate::runtime_caps::probe(&self.runtime.binary).await;
        let paused = self.init.state == State::Paused;
        crate::runtime_caps::check_checkpoint(
            &caps,
            &self.runtime.binary,
            &self.id,
            &opts,
            paused,
        )?;
        if opts.image_path.is_empty() {
            opts.image_path = if path.is_empty() {
                self.options.criu_image_path.clone()
            } else {
                path.to_string()
            };
        }
        if opts.image_path.is_empty() {
            return Err(Error::InvalidArgument(
                "checkpoint needs an image path: none in the request, its options or the \
                 runtime options (CriuImagePath)"
                    .into(),
            ));
        }
        let image = PathBuf::from(&opts.image_path);
        std::fs::create_dir_all(&image).map_err(Error::io(format!(
            "create checkpoint dir {}",
            image.display()
        )))?;
        if !path.is_empty() && Path::new(path) != image {
            // the images go elsewhere (e.g. tmpfs for a migration): leave a note
            // where containerd looks, which also keeps each checkpoint record unique
            let note = serde_json::json!({
                "image_path": opts.image_path,
                "container": self.id,
                "at_ns": std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or_default(),
            });
            let _ = std::fs::write(
                Path::new(path).join("mose-image-location.json"),
                note.to_string(),
            );
        }
        let work_base = if opts.work_path.is_empty() {
            self.options.criu_work_path.clone()
        } else {
            opts.work_path.clone()
        };
        let work = self.work_dir("dump", &work_base)?;
        // terminal containers need CRIU's shell-job mode
        opts.terminal |= self.init.stdio.terminal;
        // file locks held at the dump are kept, never silently dropped
        opts.file_locks = true;
        let mut work = work;
        let extra = criu_config_lines(&opts);
        let conf = self.bundle.join(CRIU_CONFIG);
        let lazy = opts.lazy_page_server_port;
        if lazy.is_some() {
            self.check_lazy_dump(&conf, &opts)?;
        }
        if conf.exists() {
            // a lazy dump's page server listens on the node's loopback only:
            // through RPC, CRIU takes just the port (`criu/cr-service.c`) and
            // would bind every address
            let lines = match lazy {
                Some(_) => format!("{extra}address 127.0.0.1\n"),
                None => extra.clone(),
            };
            std::fs::write(&conf, lines).map_err(Error::io(format!("write {}", conf.display())))?;
        }
        self.hold_down_for(&opts)?;
        let started = std::time::Instant::now();
        let res = match lazy {
            Some(port) => self
                .runtime
                .checkpoint_lazy(&self.id, &opts, &image, &work.path, port)
                .await
                .map(|d| self.lazy_dump = Some(d)),
            None => {
                self.runtime
                    .checkpoint(caps.checkpoint_command, &self.id, &opts, &image, &work.path)
                    .await
            }
        };
        let dump_ms = started.elapsed().as_secs_f64() * 1e3;
        if conf.exists() {
            let _ = std::fs::write(&conf, "");
        }
        if let Err(e) = res {
            work.keep = true;
            self.bring_up_after_failed_dump(&opts);
            return Err(e);
        }
        if !extra.is_empty() {
            let _ = std::fs::write(image.join(IMAGE_CRIU_CONFIG), &extra);
        }
        info!(id = %self.id, image = %image.display(), exit = opts.exit, lazy = lazy.is_some(), page_server_port = ?lazy, dump_ms, "container checkpointed");
        Ok(())
    }

    /// What a lazy dump needs: runc (its `--lazy-pages`, `--page-server` and
    /// `--status-fd`), the shim's CRIU configuration file (to bind the page
    /// server to loopback), a work directory that outlives the call, and a
    /// container that stays paused while its memory is served.
    fn check_lazy_dump(&self, conf: &Path, opts: &CheckpointOptions) -> Result<()> {
        let refuse = |why: String| {
            Err(Error::FailedPrecondition(format!(
                "cannot dump container {} lazily: {why}",
                self.id
            )))
        };
        let runtime = Path::new(&self.runtime.binary)
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if runtime != "runc" {
            return refuse(format!(
                "its runtime {} has no lazy dump (runc's --lazy-pages with --status-fd); \
                 use runc or a dump to files",
                self.runtime.binary
            ));
        }
        if !conf.exists() {
            return refuse(
                "its spec names a CRIU configuration of its own (org.criu.config), so the \
                 page server could not be bound to loopback"
                    .into(),
            );
        }
        if opts.work_path.is_empty() {
            return refuse("the request names no CRIU work directory (work_path)".into());
        }
        if self.init.state != State::Paused {
            return refuse(
                "it is not paused (the lazy dump serves memory that must not change)".into(),
            );
        }
        Ok(())
    }

    /// Whether a lazy dump of this container still runs (runc has not exited).
    pub fn lazy_dump_running(&self) -> bool {
        self.lazy_dump.as_ref().is_some_and(|d| !d.is_finished())
    }

    /// The lazy dump begun by an earlier checkpoint, to be finished without
    /// holding the container's lock (see [`crate::runtime::LazyDump::finish`]).
    pub fn take_lazy_dump(&mut self) -> Result<crate::runtime::LazyDump> {
        self.lazy_dump.take().ok_or_else(|| {
            Error::FailedPrecondition(format!("container {} has no lazy dump to finish", self.id))
        })
    }

    /// A dump whose address moves: the link goes down first (see
    /// `mose_contract::CheckpointOptions::hand_over_address`).
    fn hold_down_for(&mut self, opts: &CheckpointOptions) -> Result<()> {
        if !opts.hand_over_address {
            return Ok(());
        }
        match (&mut self.network, &self.pod_sandbox) {
            (Some(n), _) => n.hold_down(),
            (None, Some(sb)) => {
                crate::pod_migration::set_pod_interface(sb, false)?;
                self.pod_held_down = true;
                info!(id = %self.id, sandbox = %sb, "pod link held down for the dump");
                Ok(())
            }
            (None, None) => Err(Error::InvalidArgument(format!(
                "container {} has no service address to hand over (no mose.io/network and \
                 mose.io/address annotations)",
                self.id
            ))),
        }
    }

    /// The dump failed: the container keeps serving on its address.
    fn bring_up_after_failed_dump(&mut self, opts: &CheckpointOptions) {
        if let (true, Some(n)) = (opts.hand_over_address, &mut self.network) {
            if let Err(e) = n.bring_up() {
                warn!(id = %self.id, error = %e, "the service address stays down after the failed dump");
            }
        }
        if let Err(e) = self.bring_up_pod_if_held() {
            warn!(id = %self.id, error = %e, "the pod's interface stays down after the failed dump");
        }
    }

    /// The pod's interface, held down for a dump, comes up again.
    fn bring_up_pod_if_held(&mut self) -> Result<()> {
        match &self.pod_sandbox {
            Some(sb) if self.pod_held_down => {
                crate::pod_migration::set_pod_interface(sb, true)?;
                self.pod_held_down = false;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// After a resume: a link held down for a migration's dump comes up
    /// again and the address is announced (the migration rolled back).
    pub fn bring_up_if_held(&mut self) -> Result<()> {
        self.bring_up_pod_if_held()?;
        match &mut self.network {
            Some(n) if n.held_down() => n.bring_up().map_err(|e| {
                Error::Internal(format!(
                    "container {} resumed, but its service address stays down: {e}",
                    self.id
                ))
            }),
            _ => Ok(()),
        }
    }

    fn work_dir(&self, what: &str, base: &str) -> Result<WorkDir> {
        let (path, owned) = if base.is_empty() {
            let n = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            (self.bundle.join(format!("criu-{what}-{n}")), true)
        } else {
            (PathBuf::from(base), false)
        };
        std::fs::create_dir_all(&path).map_err(Error::io(format!(
            "create CRIU work dir {}",
            path.display()
        )))?;
        Ok(WorkDir {
            path,
            owned,
            keep: false,
        })
    }

    /// Starts exec `exec_id` with the runtime; returns its pid.
    pub async fn start_exec(&mut self, exec_id: &str) -> Result<i32> {
        if self.init.is_stopped() {
            return Err(Error::FailedPrecondition(format!(
                "cannot start exec {exec_id}: container {} is not running",
                self.id
            )));
        }
        let (stdio, spec) = {
            let p = self.exec(exec_id)?;
            if p.state != State::Created {
                return Err(Error::FailedPrecondition(format!(
                    "exec {exec_id} was already started"
                )));
            }
            let spec = p
                .spec
                .as_ref()
                .ok_or_else(|| Error::Internal(format!("exec {exec_id} has no process spec")))?;
            let bytes = spec
                .to_vec()
                .map_err(|e| Error::Internal(format!("exec {exec_id}: {e}")))?;
            (p.stdio.clone(), bytes)
        };
        let spec_path = self.bundle.join(format!(".exec-{exec_id}.json"));
        std::fs::write(&spec_path, spec).map_err(Error::io(format!(
            "write exec spec {}",
            spec_path.display()
        )))?;
        let pid_file = self.bundle.join(format!(".exec-{exec_id}.pid"));
        let mut pending = PendingStdio::prepare(&stdio, self.io_owner()).await?;
        let console = pending.console_path();
        let io = pending.take_runtime_io();
        let res = with_console(
            &pending,
            self.runtime
                .exec_process(&self.id, &spec_path, &pid_file, console.as_deref(), io),
        )
        .await;
        let _ = std::fs::remove_file(&spec_path);
        let console_fd = match res {
            Ok(fd) => fd,
            Err(e) => {
                pending.abort().await;
                let _ = std::fs::remove_file(&pid_file);
                return Err(e);
            }
        };
        let pid = read_pid_file(&pid_file);
        let _ = std::fs::remove_file(&pid_file);
        let pid = pid?;
        let io = pending.finish(console_fd).await?;
        let p = self.exec_mut(exec_id)?;
        p.pid = pid;
        p.io = Some(io);
        p.state = State::Running;
        Ok(pid)
    }

    fn io_owner(&self) -> IoOwner<'_> {
        IoOwner {
            uid: self.options.io_uid,
            gid: self.options.io_gid,
            container: &self.id,
            namespace: &self.namespace,
        }
    }

    pub fn exec(&self, exec_id: &str) -> Result<&Process> {
        self.execs.get(exec_id).ok_or_else(|| {
            Error::NotFound(format!("exec {exec_id} not found in container {}", self.id))
        })
    }

    pub fn exec_mut(&mut self, exec_id: &str) -> Result<&mut Process> {
        let id = self.id.clone();
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id} not found in container {id}")))
    }

    /// The init (empty `exec_id`) or an exec process.
    pub fn process(&self, exec_id: &str) -> Result<&Process> {
        if exec_id.is_empty() {
            Ok(&self.init)
        } else {
            self.exec(exec_id)
        }
    }

    pub fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process> {
        if exec_id.is_empty() {
            Ok(&mut self.init)
        } else {
            self.exec_mut(exec_id)
        }
    }

    /// Removes the container from the runtime and unmounts its rootfs.
    pub async fn destroy(&mut self) -> Result<()> {
        let res = self.runtime.delete(&self.id, true).await;
        self.unmount_rootfs();
        if let Some(n) = &self.network {
            // the poststop hook released it already when the runtime ran it
            n.release().await;
        }
        let _ = std::fs::remove_file(self.bundle.join("init.pid"));
        match res {
            Err(Error::Runtime(m)) if m.contains("does not exist") || m.contains("not exist") => {
                Ok(())
            }
            other => other,
        }
    }
}

/// A CRIU work directory; the shim's own are removed after a success and
/// kept (for their logs) after a failure, with CRIU's leftover mounts removed.
struct WorkDir {
    path: PathBuf,
    owned: bool,
    keep: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        // failed restores can leave CRIU cgroup yard mounts behind
        if let Some(p) = self.path.to_str() {
            let _ = umount_recursive(Some(p), libc::MNT_DETACH);
        }
        if self.owned && !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Runs a runtime command that may connect to the console socket, receiving
/// the terminal concurrently; returns the pty master for terminal processes.
async fn with_console(
    pending: &PendingStdio,
    fut: impl std::future::Future<Output = Result<()>>,
) -> Result<Option<std::os::fd::OwnedFd>> {
    let Some(console) = &pending.console else {
        fut.await?;
        return Ok(None);
    };
    let recv = console.receive();
    tokio::pin!(recv);
    tokio::pin!(fut);
    let mut got: Option<std::os::fd::OwnedFd> = None;
    loop {
        tokio::select! {
            r = &mut recv, if got.is_none() => { got = Some(r?); }
            r = &mut fut => {
                r?;
                if let Some(fd) = got { return Ok(Some(fd)); }
                // the runtime finished; the console must already be queued
                let fd = tokio::time::timeout(std::time::Duration::from_secs(10), &mut recv)
                    .await
                    .map_err(|_| Error::Runtime("the runtime did not send the container's terminal".into()))??;
                return Ok(Some(fd));
            }
        }
    }
}

/// Reads and checks the bundle's `config.json` (see `crate::oci`).
fn read_spec(bundle: &Path) -> Result<BundleSpec> {
    let path = bundle.join("config.json");
    let bytes =
        std::fs::read(&path).map_err(Error::io(format!("read OCI spec {}", path.display())))?;
    let invalid =
        |m: String| Error::InvalidArgument(format!("invalid OCI spec {}: {m}", path.display()));
    let spec = BundleSpec::parse(&bytes).map_err(invalid)?;
    validate_spec(&spec).map_err(invalid)?;
    validate_annotations(&spec)?;
    Ok(spec)
}

/// Refuses a spec whose `mose.io/*` annotations (the user's migration
/// targets) are malformed, so a typo fails `ctr run` at once rather than
/// surprising the user at migration time. The message is mose-policy's own,
/// naming the annotation, quoting the value and stating the accepted form
/// (one that is not a string at all is refused by reading the spec).
/// Reading only: runs before anything is written or the runtime is invoked.
pub fn validate_annotations(spec: &Spec) -> Result<()> {
    let Some(annotations) = spec.annotations() else {
        return Ok(());
    };
    // in key order, so that of several malformed ones the same is named
    let mut pairs: Vec<(&str, &str)> = annotations
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    pairs.sort_unstable();
    mose_policy::annotations::parse_pairs(pairs)
        .map(|_| ())
        .map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// What to do about a spec without `ociVersion`.
const MISSING_VERSION: &str =
    "config.json must name the OCI runtime spec version it follows, e.g. \"ociVersion\": \"1.0.2\"";

/// Checks what the runtime would otherwise reject with a less clear message
/// (reading the spec already named any field of the wrong form).
pub fn validate_spec(spec: &Spec) -> std::result::Result<(), String> {
    if spec.version().is_empty() {
        return Err(format!("ociVersion is missing: {MISSING_VERSION}"));
    }
    if let Some(p) = spec.process() {
        if p.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err("process.args is empty: nothing to run".into());
        }
        // an absent cwd reads as "" and is the runtime's to judge, as before
        let cwd = p.cwd();
        if !cwd.as_os_str().is_empty() && !cwd.is_absolute() {
            return Err(format!("process.cwd {cwd:?} is not an absolute path"));
        }
    }
    Ok(())
}

/// CRIU settings runc has no flag for (e.g. `tcp-close`) reach CRIU through a
/// per-container configuration file, named by the `org.criu.config`
/// annotation that runc honours. The shim adds the annotation at create and
/// writes the file around each checkpoint and restore.
pub const CRIU_CONFIG: &str = "mose-criu.conf";
/// Written next to a CRIU image: the settings it was dumped with, which its
/// restore needs too.
const IMAGE_CRIU_CONFIG: &str = "mose-criu.conf";

/// Points the spec's `org.criu.config` at the shim's per-container CRIU
/// configuration file (creating it); false when the user named their own.
fn attach_criu_config(bundle: &Path, spec: &mut BundleSpec) -> Result<bool> {
    if spec
        .annotations()
        .as_ref()
        .is_some_and(|a| a.contains_key(CRIU_CONFIG_ANNOTATION))
    {
        return Ok(false); // the user's own CRIU configuration wins
    }
    let conf = bundle.join(CRIU_CONFIG);
    std::fs::write(&conf, "").map_err(Error::io(format!("create {}", conf.display())))?;
    spec.set_annotation(CRIU_CONFIG_ANNOTATION, &conf.display().to_string())
        .map_err(|e| Error::Internal(format!("annotate the OCI spec: {e}")))?;
    Ok(true)
}

/// The annotation runc reads the CRIU configuration file's path from.
const CRIU_CONFIG_ANNOTATION: &str = "org.criu.config";

/// Writes the spec back: the `config.json` read, with the shim's edits only
/// (see `crate::oci`).
fn write_spec(bundle: &Path, spec: &BundleSpec) -> Result<()> {
    let path = bundle.join("config.json");
    let bytes = spec.to_vec().map_err(Error::Internal)?;
    std::fs::write(&path, bytes).map_err(Error::io(format!("write {}", path.display())))
}

/// The CRIU configuration lines for `opts` beyond runc's own flags.
fn criu_config_lines(opts: &CheckpointOptions) -> String {
    let mut s = String::new();
    // what the restore must repeat (runc's restore has no memory of the dump)
    if opts.open_tcp {
        s.push_str("tcp-established\n");
    }
    if opts.external_unix_sockets {
        s.push_str("ext-unix-sk\n");
    }
    if opts.tcp_close {
        s.push_str("tcp-close\n");
    }
    if opts.skip_in_flight {
        s.push_str("skip-in-flight\n");
    }
    s
}

/// The container gets a pid namespace of its own.
fn has_pid_namespace(spec: &Spec) -> bool {
    crate::oci::creates_namespace(spec, LinuxNamespaceType::Pid)
}

/// The container's root directory: `root.path`, relative to the bundle
/// (`rootfs` when the spec names none).
fn spec_root(spec: &Spec, bundle: &Path) -> PathBuf {
    let p = spec
        .root()
        .as_ref()
        .map(|r| r.path().as_path())
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("rootfs"));
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        bundle.join(p)
    }
}

fn persist_runtime(bundle: &Path, rt: &OciRuntime) -> Result<()> {
    let p = PersistedRuntime {
        binary: rt.binary.clone(),
        root: rt.root.clone(),
        systemd_cgroup: rt.systemd_cgroup,
    };
    let bytes = serde_json::to_vec(&p).map_err(|e| Error::Internal(e.to_string()))?;
    std::fs::write(bundle.join(OPTIONS_FILE), bytes).map_err(Error::io(format!(
        "write {}",
        bundle.join(OPTIONS_FILE).display()
    )))
}

/// Parses the JSON OCI process spec of an Exec request.
pub fn parse_exec_spec(any: Option<&Any>) -> Result<ExecSpec> {
    let any =
        any.ok_or_else(|| Error::InvalidArgument("exec request carries no process spec".into()))?;
    let spec = ExecSpec::parse(&any.value).map_err(|e| {
        Error::InvalidArgument(format!("exec process spec ({}): {e}", any.type_url))
    })?;
    if spec.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::InvalidArgument(
            "exec process spec has empty args".into(),
        ));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(v: serde_json::Value) -> std::result::Result<(), String> {
        validate_spec(&*BundleSpec::parse(v.to_string().as_bytes())?)
    }

    fn annotations(v: serde_json::Value) -> Result<()> {
        let spec = BundleSpec::parse(v.to_string().as_bytes()).map_err(Error::InvalidArgument)?;
        validate_annotations(&spec)
    }

    #[test]
    fn spec_validation() {
        let ok = serde_json::json!({"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/"}});
        assert!(check(ok).is_ok());
        let e = check(serde_json::json!({"ociVersion":"1.0.2","process":{"args":[]}})).unwrap_err();
        assert!(e.contains("process.args"));
        let e = check(serde_json::json!({"ociVersion":"1.0.2","process":{"cwd":"/"}})).unwrap_err();
        assert!(e.contains("process.args is empty"), "{e}");
        let e = check(serde_json::json!({"ociVersion":"1","process":{"args":["a"],"cwd":"rel"}}))
            .unwrap_err();
        assert!(e.contains("not an absolute path"));
        assert!(check(serde_json::json!([1])).is_err());
        let e = check(serde_json::json!({"process":{"args":["sh"]}})).unwrap_err();
        assert!(e.starts_with("ociVersion is missing"), "{e}");
    }

    #[test]
    fn mose_annotations_are_validated() {
        let spec = |ann: serde_json::Value| serde_json::json!({"ociVersion":"1.0.2","process":{"args":["sh"]},"annotations":ann});
        assert!(annotations(serde_json::json!({"ociVersion":"1.0.2"})).is_ok());
        let ok = spec(serde_json::json!({
            "mose.io/max-downtime": "200ms",
            "mose.io/technique": "precopy",
            "org.criu.config": "/x",
            "example.com/number": 3
        }));
        assert!(annotations(ok).is_ok());
        let e = annotations(spec(serde_json::json!({"mose.io/max-downtime": "abc"}))).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)));
        assert_eq!(
            e.to_string(),
            mose_policy::annotations::parse_pairs([("mose.io/max-downtime", "abc")])
                .unwrap_err()
                .to_string()
        );
        assert!(e.to_string().contains("200ms"));
        let e = annotations(spec(serde_json::json!({"mose.io/max-downtme": "1s"}))).unwrap_err();
        assert!(e.to_string().contains("did you mean mose.io/max-downtime"));
        let e = annotations(spec(serde_json::json!({"mose.io/strict": true}))).unwrap_err();
        assert!(e.to_string().contains("expected a string"));
        // of several malformed ones, the first in key order is named
        let e = annotations(spec(serde_json::json!({
            "mose.io/max-downtime": "abc", "mose.io/max-bandwidth": "fast"})))
        .unwrap_err();
        assert!(e.to_string().contains("mose.io/max-bandwidth"), "{e}");
    }

    #[test]
    fn create_with_bad_annotations_leaves_the_bundle_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let spec = serde_json::json!({"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/"},
            "annotations":{"mose.io/max-bandwidth":"fast"}});
        let text = spec.to_string();
        std::fs::write(dir.path().join("config.json"), &text).unwrap();
        let e = read_spec(dir.path()).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("annotation mose.io/max-bandwidth=\"fast\""));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only config.json");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("config.json")).unwrap(),
            text
        );
    }

    #[test]
    fn criu_config_annotation_is_the_only_change_written() {
        let dir = tempfile::tempdir().unwrap();
        let text = include_str!("testdata/containerd-cri-config.json");
        std::fs::write(dir.path().join("config.json"), text).unwrap();
        let mut spec = read_spec(dir.path()).unwrap();
        assert!(attach_criu_config(dir.path(), &mut spec).unwrap());
        write_spec(dir.path(), &spec).unwrap();
        let conf = dir.path().join(CRIU_CONFIG);
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), "");
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap())
                .unwrap();
        let mut expected: serde_json::Value = serde_json::from_str(text).unwrap();
        expected["annotations"][CRIU_CONFIG_ANNOTATION] = conf.display().to_string().into();
        assert_eq!(written, expected);
        // the next create (a restore of this bundle) keeps the configured one
        let mut spec = read_spec(dir.path()).unwrap();
        assert!(!attach_criu_config(dir.path(), &mut spec).unwrap());
        assert!(has_pid_namespace(&spec));
        assert!(!crate::loopback::has_own_netns(&spec));
        assert_eq!(spec_root(&spec, dir.path()), dir.path().join("rootfs"));
    }

    #[test]
    fn spec_root_defaults_to_the_bundles_rootfs() {
        let b = Path::new("/b");
        let root = |v: serde_json::Value| {
            spec_root(&BundleSpec::parse(v.to_string().as_bytes()).unwrap(), b)
        };
        assert_eq!(
            root(serde_json::json!({"ociVersion":"1"})),
            b.join("rootfs")
        );
        assert_eq!(
            root(serde_json::json!({"ociVersion":"1","root":{"readonly":true}})),
            b.join("rootfs")
        );
        assert_eq!(
            root(serde_json::json!({"ociVersion":"1","root":{"path":"r"}})),
            b.join("r")
        );
        assert_eq!(
            root(serde_json::json!({"ociVersion":"1","root":{"path":"/abs/r"}})),
            PathBuf::from("/abs/r")
        );
    }

    #[test]
    fn exec_specs_are_parsed_typed() {
        let any = |v: &str| Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: v.as_bytes().to_vec(),
            ..Default::default()
        };
        let p = parse_exec_spec(Some(&any(
            r#"{"args":["sh"],"cwd":"/","user":{"uid":1,"gid":2},"terminal":true}"#,
        )))
        .unwrap();
        assert_eq!(p.terminal(), Some(true));
        assert_eq!(p.user().uid(), 1);
        let e = parse_exec_spec(Some(&any(r#"{"args":[],"cwd":"/"}"#))).unwrap_err();
        assert_eq!(e.to_string(), "exec process spec has empty args");
        let e = parse_exec_spec(Some(&any("{"))).unwrap_err();
        assert!(e.to_string().contains("Process): not valid JSON"), "{e}");
        let e = parse_exec_spec(Some(&any(r#"{"args":["sh"],"user":{"uid":-1}}"#))).unwrap_err();
        assert!(e.to_string().contains("): user.uid: invalid value"), "{e}");
        assert!(parse_exec_spec(None).is_err());
    }

    #[test]
    fn runtime_roots_differ_per_containerd() {
        let o = RuntimeOptions::default();
        let a = runtime_root(&o, "/run/a.sock", "ns");
        let b = runtime_root(&o, "/run/b.sock", "ns");
        assert_ne!(a, b);
        assert!(a.ends_with("ns"));
        let o = RuntimeOptions {
            root: "/x".into(),
            ..Default::default()
        };
        assert_eq!(
            runtime_root(&o, "/run/a.sock", "ns"),
            PathBuf::from("/x/ns")
        );
    }
}
