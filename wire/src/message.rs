//! Control messages of a migration, in protocol order:
//!
//! ```text
//! source                                   destination
//! Hello{version,node}              ->
//!                                  <-      HelloOk{version,node}
//! Begin{migration, container}      ->
//!                                  <-      BeginOk{has_image}
//! [FileBegin image.tar, data, FileEnd]     (only when the destination lacks the image)
//! RoundStart{round} [Blocks...] RoundEnd   (pre-copy rounds, while the app runs)
//! --- source freezes the container ---
//! RoundStart{final} [Blocks...] RoundEnd
//! FileBegin/FileData/FileEnd ...           (CRIU image files other than pages)
//! Manifest pages-N.img                     (pages as block hashes)
//! FileBegin rootfs.tar ... FileEnd         (the container's rootfs changes)
//! Commit                           ->
//!                                  <-      Restored{pid,...} | Failed{step,error}
//! Released                         ->      (source removed its copy)
//! ```
//! `Abort{reason}` from the source at any point makes the destination discard
//! everything it received.

use serde::{Deserialize, Serialize};

/// How a container is migrated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Technique {
    /// Freeze, dump, transfer, restore.
    Cold,
    /// Copy memory while running, in rounds; then freeze and send what changed.
    Precopy,
}

impl std::fmt::Display for Technique {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Technique::Cold => "cold",
            Technique::Precopy => "precopy",
        })
    }
}

impl std::str::FromStr for Technique {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cold" => Ok(Self::Cold),
            "precopy" | "pre-copy" => Ok(Self::Precopy),
            other => Err(format!(
                "unknown technique {other:?}: expected cold or precopy"
            )),
        }
    }
}

/// Everything that makes a container itself, apart from its memory and files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerIdentity {
    pub id: String,
    pub namespace: String,
    pub image: String,
    /// The OCI runtime spec (JSON).
    pub spec: serde_json::Value,
    pub labels: std::collections::BTreeMap<String, String>,
    pub snapshotter: String,
    pub runtime: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Hello {
        version: u32,
        node: String,
    },
    HelloOk {
        version: u32,
        node: String,
    },
    Begin {
        migration: String,
        technique: Technique,
        container: ContainerIdentity,
    },
    BeginOk {
        has_image: bool,
    },
    RoundStart {
        round: u32,
        final_round: bool,
    },
    RoundEnd {
        round: u32,
        blocks: u64,
    },
    FileBegin {
        name: String,
        size: u64,
        hash: String,
    },
    FileEnd {
        name: String,
    },
    Commit,
    Restored {
        pid: u32,
        restore_ms: f64,
        prepare_ms: f64,
        /// The destination's own timeline: (step, milliseconds), in order.
        #[serde(default)]
        steps: Vec<(String, f64)>,
    },
    Failed {
        step: String,
        error: String,
    },
    Abort {
        reason: String,
    },
    Released,
    Ack,
    /// Link probe instead of a migration: `bytes` of filler follow as file
    /// data; the destination answers [`Message::Measured`]. The policy uses it
    /// to learn the link's real rate between two plugins.
    Measure {
        bytes: u64,
    },
    /// The destination's view of a probe: `bytes` arrived over `ms`, timed
    /// from the first filler frame to the last.
    Measured {
        bytes: u64,
        ms: f64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn technique_parses() {
        assert_eq!("cold".parse::<Technique>(), Ok(Technique::Cold));
        assert!("warm"
            .parse::<Technique>()
            .unwrap_err()
            .contains("cold or precopy"));
        let m = Message::Failed {
            step: "restore".into(),
            error: "x".into(),
        };
        let s = serde_json::to_string(&m).unwrap();
        assert!(s.contains("\"type\":\"failed\""));
    }
}
