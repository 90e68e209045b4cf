//! What an OCI runtime binary can do for MOSE's checkpoint, restore and
//! migration, read from the binary's own `--version` output (so a path, a
//! wrapper or a renamed binary is judged by what it is, not by its name).
//!
//! Pure parsing: the shim (`runtime_caps`) and the node agent (the source
//! of a migration) run `<binary> --version` themselves and ask here.
//!
//! - runc: checkpoint and restore (CRIU, found on PATH).
//! - crun: both only when built with CRIU (`--version` lists `+CRIU`);
//!   Debian 12's crun 1.8.1 lists `-CRIU`/no `+CRIU`.
//! - youki (0.7): a CRIU dump (its subcommand is spelt `checkpointt`) of a
//!   running container only (not of a paused one), no restore at all.
//! - anything else: assumed capable; the runtime's own error is reported.

/// The checkpoint/restore abilities of one OCI runtime binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciRuntimeCaps {
    /// `runc 1.1.5`, `crun 1.8.1`, `youki 0.7.0`, or the binary as named
    /// when its `--version` output is not recognised.
    pub name: String,
    /// Why the runtime cannot dump a container with CRIU (`None`: it can).
    pub no_checkpoint: Option<String>,
    /// Why it cannot restore one from a CRIU image (`None`: it can).
    pub no_restore: Option<String>,
    /// The subcommand of a CRIU dump.
    pub checkpoint_command: &'static str,
    /// The runtime dumps a paused (frozen) container; containerd's client
    /// pauses the task around every checkpoint, and so does a migration.
    pub checkpoints_paused: bool,
}

impl OciRuntimeCaps {
    /// A runtime MOSE knows nothing about: nothing is refused ahead.
    pub fn unknown(binary: &str) -> Self {
        OciRuntimeCaps {
            name: binary.to_string(),
            no_checkpoint: None,
            no_restore: None,
            checkpoint_command: "checkpoint",
            checkpoints_paused: true,
        }
    }

    /// Why a migration of a container under this runtime cannot work:
    /// the source dumps it frozen, the destination restores it.
    pub fn no_migration(&self) -> Option<String> {
        self.no_restore
            .clone()
            .or(self.no_checkpoint.clone())
            .or((!self.checkpoints_paused).then(|| self.no_paused_checkpoint()))
    }

    /// Why a paused container cannot be dumped (meaningful when
    /// `checkpoints_paused` is false).
    pub fn no_paused_checkpoint(&self) -> String {
        format!(
            "{} cannot checkpoint a paused container (its `{}` requires a running one)",
            self.name, self.checkpoint_command
        )
    }
}

/// What to use instead, for messages refusing a checkpoint, restore or
/// migration.
pub const USE_INSTEAD: &str =
    "run containers that are checkpointed, restored or migrated with runc (the default: no BinaryName in the runtime options)";

/// Reads the capabilities from `<binary> --version` output.
pub fn parse_version(binary: &str, output: &str) -> OciRuntimeCaps {
    // `runc version 1.1.5`, `crun version 1.8.1`, `youki version: 0.7.0`
    let first = output.lines().next().unwrap_or_default().trim();
    let Some((kind, version)) = first.split_once(" version") else {
        return OciRuntimeCaps::unknown(binary);
    };
    let version = version
        .trim_start_matches(':')
        .split_whitespace()
        .next()
        .unwrap_or_default();
    let name = format!("{kind} {version}");
    match kind {
        "runc" => OciRuntimeCaps {
            name,
            ..OciRuntimeCaps::unknown(binary)
        },
        "crun" => {
            let criu = output
                .split_whitespace()
                .any(|w| w.eq_ignore_ascii_case("+CRIU"));
            let why = (!criu).then(|| {
                format!(
                    "{name} is built without CRIU support (`{binary} --version` lists no +CRIU)"
                )
            });
            OciRuntimeCaps {
                no_checkpoint: why.clone(),
                no_restore: why,
                name,
                ..OciRuntimeCaps::unknown(binary)
            }
        }
        "youki" => OciRuntimeCaps {
            no_restore: Some(format!(
                "{name} cannot restore a container from a CRIU image (it has no `restore` command)"
            )),
            name,
            no_checkpoint: None,
            checkpoint_command: "checkpointt",
            checkpoints_paused: false,
        },
        _ => OciRuntimeCaps::unknown(binary),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_can_do_everything() {
        let c = parse_version(
            "runc",
            "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\ngo: go1.19.8\nlibseccomp: 2.5.4\n",
        );
        assert_eq!(c.name, "runc 1.1.5+ds1");
        assert_eq!((c.no_checkpoint, c.no_restore), (None, None));
        assert_eq!(c.checkpoint_command, "checkpoint");
        assert!(c.checkpoints_paused);
    }

    #[test]
    fn crun_needs_criu_in_its_feature_list() {
        let debian = "crun version 1.8.1\ncommit: f8a096be060b22ccd3d5f3ebe44108517fbf6c30\nrundir: /run/crun\nspec: 1.0.0\n+SYSTEMD +SELINUX +APPARMOR +CAP +SECCOMP +EBPF +YAJL\n";
        let c = parse_version("crun", debian);
        assert_eq!(c.name, "crun 1.8.1");
        let why = c.no_restore.clone().unwrap();
        assert!(why.contains("crun 1.8.1") && why.contains("+CRIU"), "{why}");
        assert_eq!(c.no_checkpoint, c.no_restore);
        assert_eq!(c.no_migration(), Some(why));
        let with = debian.replace("+EBPF", "+EBPF +CRIU");
        let c = parse_version("/usr/bin/crun", &with);
        assert_eq!((c.no_checkpoint, c.no_restore), (None, None));
    }

    #[test]
    fn youki_dumps_but_cannot_restore() {
        let c = parse_version(
            "youki",
            "youki version: 0.7.0\ncommit: 0.7.0-VERGEN_IDEMPOTENT_OUTPUT\nspec: 1.1.0\nrustc: 1.95.0\nlibseccomp: 2.5.4\n",
        );
        assert_eq!(c.name, "youki 0.7.0");
        assert!(c.no_checkpoint.is_none());
        assert_eq!(c.checkpoint_command, "checkpointt");
        assert!(!c.checkpoints_paused);
        assert!(c
            .no_paused_checkpoint()
            .contains("`checkpointt` requires a running one"));
        let why = c.no_restore.clone().unwrap();
        assert!(
            why.contains("youki 0.7.0") && why.contains("no `restore`"),
            "{why}"
        );
        assert_eq!(c.no_migration(), Some(why));
    }

    #[test]
    fn unrecognised_output_refuses_nothing() {
        for out in ["", "my-runtime 3\n", "garbage version"] {
            let c = parse_version("/opt/rt", out);
            assert_eq!(c, OciRuntimeCaps::unknown("/opt/rt"), "{out:?}");
        }
        let c = parse_version("x", "kata version 3.0\n");
        assert_eq!(c.name, "x");
        assert!(c.no_migration().is_none());
    }
}
