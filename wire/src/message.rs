//! Control messages of a migration, in protocol order:
//!
//! ```text
//! source                                   destination
//! Hello{version,node}              ->
//!                                  <-      HelloOk{version,node}
//! Begin{migration, container}      ->
//!                                  <-      BeginOk{has_image}
//! [FileBegin image.tar, data, FileEnd]     (only when the destination lacks the image)
//!                                  <-      Ack (image imported)
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
//!
//! Post-copy and hybrid differ after the freeze: pages CRIU marks lazy
//! (private anonymous memory) stay behind on the source. Their manifest slots
//! carry [`LAZY_SLOT`] (post-copy) or the page's hash (hybrid), and the
//! destination restores with those pages missing, served through userfaultfd:
//!
//! ```text
//! Commit                           ->      (source starts answering PageRequests)
//!                                  <-      PageRequest{pid,vaddr,pages}  (a fault)
//! Pages frames                     ->      (answers first, then a background push)
//!                                  <-      LazyProgress{pages}  (the push keeps a window)
//!                                  <-      Restored{pid,...}
//! LazySent{pages}                  ->      (the push is over)
//!                                  <-      LazyDone{...}  (every page is in place)
//! Released                         ->
//!                                  <-      Ack
//! ```
//! Pod hand-overs (see `mose_contract::pod`) are requests of the destination
//! on a connection of their own, after `Hello`/`HelloOk`:
//!
//! ```text
//! destination                              source
//! PodQuery{namespace,pod}          ->
//!                                  <-      PodInfo{address,containers} | Failed
//! Pull{namespace,pod,container,technique,reply_to} ->
//!                                  <-      PullOk{container} | Failed
//!         (the source then migrates the container to reply_to as above)
//! ```
//!
//! `Abort{reason}` from the source at any point makes the destination discard
//! everything it received.

use serde::{Deserialize, Serialize};

pub use mose_contract::Technique;

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
    /// Pod hand-over, destination to source (instead of `Begin`): the
    /// address of the running pod `namespace/pod` on the source, which the
    /// pod continuing it keeps. Answered by [`Message::PodInfo`] or `Failed`.
    PodQuery {
        namespace: String,
        pod: String,
    },
    /// The source pod's IPv4 address with its prefix length (`A.B.C.D/len`)
    /// and its containers' names, in creation order.
    PodInfo {
        address: String,
        containers: Vec<String>,
    },
    /// Pod hand-over, destination to source (instead of `Begin`): migrate
    /// container `container` of pod `namespace/pod` to the endpoint
    /// `reply_to` (`HOST:PORT`, the asking node's) with `technique`
    /// (`None`: `auto`, the source's policy plans for the pod as a whole).
    /// Answered by [`Message::PullOk`] once the migration has begun on a
    /// connection of its own, or `Failed`.
    Pull {
        namespace: String,
        pod: String,
        container: String,
        #[serde(default)]
        technique: Option<Technique>,
        reply_to: String,
    },
    /// The pulled container's migration started; `container` is its id on
    /// the source.
    PullOk {
        container: String,
    },
    /// Lazy phase, destination to source: a restored process (`pid` as in the
    /// checkpoint) faulted on `pages` pages from `vaddr` that it does not hold.
    PageRequest {
        pid: u32,
        vaddr: u64,
        pages: u32,
    },
    /// Lazy phase, destination to source: lazy pages received so far (all
    /// Pages frames). The source keeps its background push at most a small
    /// window ahead of this, so that an answer to a fault never queues behind
    /// seconds of pushed pages on a slow link.
    LazyProgress {
        pages: u64,
    },
    /// Lazy phase, source to destination: every lazy page has been sent
    /// (`pages` in all, answers and push together).
    LazySent {
        pages: u64,
    },
    /// Lazy phase, destination to source: every lazy page is in place; the
    /// source may let go of its frozen copy.
    LazyDone {
        #[serde(flatten)]
        stats: LazyStats,
    },
}

impl Message {
    /// The message's wire name (its `type` tag, e.g. `"page_request"`): what
    /// logs and errors show instead of the whole message.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::HelloOk { .. } => "hello_ok",
            Message::Begin { .. } => "begin",
            Message::BeginOk { .. } => "begin_ok",
            Message::RoundStart { .. } => "round_start",
            Message::RoundEnd { .. } => "round_end",
            Message::FileBegin { .. } => "file_begin",
            Message::FileEnd { .. } => "file_end",
            Message::Commit => "commit",
            Message::Restored { .. } => "restored",
            Message::Failed { .. } => "failed",
            Message::Abort { .. } => "abort",
            Message::Released => "released",
            Message::Ack => "ack",
            Message::Measure { .. } => "measure",
            Message::Measured { .. } => "measured",
            Message::PodQuery { .. } => "pod_query",
            Message::PodInfo { .. } => "pod_info",
            Message::Pull { .. } => "pull",
            Message::PullOk { .. } => "pull_ok",
            Message::PageRequest { .. } => "page_request",
            Message::LazyProgress { .. } => "lazy_progress",
            Message::LazySent { .. } => "lazy_sent",
            Message::LazyDone { .. } => "lazy_done",
        }
    }
}

/// What the destination measured in a lazy phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LazyStats {
    /// Restore finished to last page in place, in milliseconds.
    pub lazy_ms: f64,
    /// Page faults that had to wait for a page.
    pub faults: u64,
    pub fault_p50_us: f64,
    pub fault_p99_us: f64,
    /// Lazy pages placed: from the source, and from the destination's own
    /// cache of pre-copied blocks (hybrid).
    pub pages_from_source: u64,
    pub pages_from_cache: u64,
    /// Lazy pages that needed no data (zero pages).
    pub zero_pages: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_their_wire_name() {
        let m = Message::Failed {
            step: "restore".into(),
            error: "x".into(),
        };
        let s = serde_json::to_string(&m).unwrap();
        assert!(s.contains(&format!("\"type\":\"{}\"", m.name())));
    }
}
