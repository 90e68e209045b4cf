//! The receiver's state machine: the destination's states of the sequence
//! chart in `docs/migration.md`, and the one transition function
//! [`ReceiverState::step`]. Pure: no I/O, so every path of the chart (and any
//! hostile frame sequence) is testable without containers.
//!
//! ```text
//! AwaitHello --Hello--> AwaitBegin --Measure--> Probe --filler...--> Done
//!                            | --PodQuery | Pull--> Done (answered at once)
//!                            |
//!                          Begin
//!                            v
//!   Transfer (Blocks, Manifest, FileBegin/Data/End, RoundStart/End)
//!      | Commit (cold, pre-copy)          | Commit (post-copy, hybrid)
//!      v                                  v
//!   Restoring --restored--> AwaitRelease  Lazy{restored, placed, sent}
//!                              | Released    (Pages, LazySent, restored, placed)
//!                              v             | Released (once every page is placed)
//!                             Done <---------+
//! ```
//! `Abort` in any state, and anything the chart does not allow, is an error;
//! the driver then cleans up (see [`super`]).

use mose_wire::{Message, Technique, PROTOCOL_VERSION};

use crate::error::ProtocolError;

/// Largest link probe a peer may ask this node to absorb, in bytes.
pub const MAX_PROBE_BYTES: u64 = 256 << 20;

/// A file being received (`FileBegin` .. `FileEnd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFile {
    pub name: String,
    /// Announced size in bytes.
    pub size: u64,
    /// Bytes received so far.
    pub written: u64,
}

/// Where the destination is in a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverState {
    /// Connected and authenticated; `Hello` comes first.
    AwaitHello,
    /// `HelloOk` sent; `Begin` (a migration) or `Measure` (a link probe) next.
    AwaitBegin,
    /// A link probe: `remaining` bytes of filler to absorb.
    Probe { remaining: u64 },
    /// Rounds, CRIU files, manifests and the rootfs, until `Commit`.
    Transfer {
        technique: Technique,
        file: Option<OpenFile>,
    },
    /// Cold and pre-copy: everything is here, the container is being restored.
    Restoring,
    /// `Restored` sent; the source's `Released` keeps the copy here.
    AwaitRelease,
    /// Post-copy and hybrid after `Commit`: the container restores and runs
    /// while its lazy pages arrive.
    Lazy {
        /// The container runs (`Restored` sent).
        restored: bool,
        /// Every lazy page is in place (`LazyDone` sent).
        placed: bool,
        /// The source said it sent every page (`LazySent`).
        sent: bool,
    },
    /// The migration is complete (or the probe answered).
    Done,
}

/// What can happen to the receiver: a frame from the source or a local event.
#[derive(Debug, Clone, Copy)]
pub enum ReceiverEvent<'a> {
    /// A control message.
    Message(&'a Message),
    /// A frame of page blocks.
    Blocks,
    /// A page manifest; `hint` for a predicted layout (`hint:` prefix).
    Manifest { hint: bool },
    /// `len` bytes of file data (or probe filler).
    FileData { len: u64 },
    /// A frame of lazy pages.
    Pages,
    /// Local: the container was restored and runs.
    Restored,
    /// Local: every lazy page is in place.
    AllPlaced,
}

impl ReceiverEvent<'_> {
    fn describe(&self) -> String {
        match self {
            ReceiverEvent::Message(m) => format!("{} message", m.name()),
            ReceiverEvent::Blocks => "a Blocks frame".into(),
            ReceiverEvent::Manifest { .. } => "a Manifest frame".into(),
            ReceiverEvent::FileData { .. } => "a FileData frame".into(),
            ReceiverEvent::Pages => "a Pages frame (lazy pages)".into(),
            ReceiverEvent::Restored => "the local restore's end".into(),
            ReceiverEvent::AllPlaced => "the last lazy page's placement".into(),
        }
    }
}

impl ReceiverState {
    /// What the state waits for, as errors say it.
    pub fn describe(&self) -> &'static str {
        match self {
            ReceiverState::AwaitHello => "waiting for Hello",
            ReceiverState::AwaitBegin => "waiting for Begin or Measure",
            ReceiverState::Probe { .. } => "absorbing a link probe",
            ReceiverState::Transfer { .. } => "receiving the migration",
            ReceiverState::Restoring => "restoring the container",
            ReceiverState::AwaitRelease => "waiting for the source to release its copy",
            ReceiverState::Lazy { .. } => "in the lazy phase",
            ReceiverState::Done => "done",
        }
    }

    /// Whether this is a post-copy or hybrid migration past its `Commit`.
    pub fn is_lazy(&self) -> bool {
        matches!(self, ReceiverState::Lazy { .. })
    }

    /// The transition function: the state after `event`, or why `event` is
    /// not allowed here.
    pub fn step(self, event: ReceiverEvent<'_>) -> Result<ReceiverState, ProtocolError> {
        use ReceiverEvent as E;
        use ReceiverState as S;
        if let E::Message(Message::Abort { reason }) = event {
            return Err(ProtocolError::Aborted {
                reason: reason.clone(),
            });
        }
        match (self, event) {
            (S::AwaitHello, E::Message(Message::Hello { version, .. })) => {
                if *version == PROTOCOL_VERSION {
                    Ok(S::AwaitBegin)
                } else {
                    Err(ProtocolError::Version {
                        got: *version,
                        ours: PROTOCOL_VERSION,
                    })
                }
            }
            (S::AwaitBegin, E::Message(Message::Measure { bytes })) => {
                if *bytes == 0 || *bytes > MAX_PROBE_BYTES {
                    return Err(ProtocolError::ProbeSize {
                        bytes: *bytes,
                        max: MAX_PROBE_BYTES,
                    });
                }
                Ok(S::Probe { remaining: *bytes })
            }
            // pod hand-over requests: one answer, and the connection is done
            (S::AwaitBegin, E::Message(Message::PodQuery { .. } | Message::Pull { .. })) => {
                Ok(S::Done)
            }
            (S::AwaitBegin, E::Message(Message::Begin { technique, .. })) => Ok(S::Transfer {
                technique: *technique,
                file: None,
            }),
            (S::Probe { remaining }, E::FileData { len }) if len >= remaining => Ok(S::Done),
            (S::Probe { remaining }, E::FileData { len }) => Ok(S::Probe {
                remaining: remaining - len,
            }),
            (S::Transfer { technique, file }, event) => transfer(technique, file, event),
            (S::Restoring, E::Restored) => Ok(S::AwaitRelease),
            (S::AwaitRelease, E::Message(Message::Released)) => Ok(S::Done),
            (
                S::Lazy {
                    restored,
                    placed,
                    sent,
                },
                event,
            ) => lazy(restored, placed, sent, event),
            (state, event) => Err(ProtocolError::Unexpected {
                state: state.describe(),
                got: event.describe(),
            }),
        }
    }
}

fn transfer(
    technique: Technique,
    file: Option<OpenFile>,
    event: ReceiverEvent<'_>,
) -> Result<ReceiverState, ProtocolError> {
    use ReceiverEvent as E;
    let stay = |file| Ok(ReceiverState::Transfer { technique, file });
    match (file, event) {
        (file, E::Blocks | E::Manifest { .. }) => stay(file),
        (file, E::Message(Message::RoundStart { .. } | Message::RoundEnd { .. })) => stay(file),
        (None, E::FileData { .. }) => Err(ProtocolError::DataOutsideFile),
        (Some(f), E::FileData { len }) => {
            let written = f.written.saturating_add(len);
            if written > f.size {
                return Err(ProtocolError::FileTooLong {
                    name: f.name,
                    size: f.size,
                });
            }
            stay(Some(OpenFile { written, ..f }))
        }
        (None, E::Message(Message::FileBegin { name, size, .. })) => stay(Some(OpenFile {
            name: name.clone(),
            size: *size,
            written: 0,
        })),
        (Some(open), E::Message(Message::FileBegin { name, .. })) => {
            Err(ProtocolError::FileInsideFile {
                open: open.name,
                name: name.clone(),
            })
        }
        (Some(open), E::Message(Message::FileEnd { name })) => {
            if open.name != *name {
                Err(ProtocolError::FileEndMismatch {
                    open: open.name,
                    got: name.clone(),
                })
            } else if open.written != open.size {
                Err(ProtocolError::FileTruncated {
                    name: open.name,
                    written: open.written,
                    size: open.size,
                })
            } else {
                stay(None)
            }
        }
        (Some(open), E::Message(Message::Commit)) => {
            Err(ProtocolError::CommitInsideFile { name: open.name })
        }
        (None, E::Message(Message::Commit)) if technique.is_lazy() => Ok(ReceiverState::Lazy {
            restored: false,
            placed: false,
            sent: false,
        }),
        (None, E::Message(Message::Commit)) => Ok(ReceiverState::Restoring),
        (file, event) => Err(ProtocolError::Unexpected {
            state: ReceiverState::Transfer { technique, file }.describe(),
            got: match event {
                E::Pages => "lazy pages before the restore was committed".into(),
                other => other.describe(),
            },
        }),
    }
}

fn lazy(
    restored: bool,
    placed: bool,
    sent: bool,
    event: ReceiverEvent<'_>,
) -> Result<ReceiverState, ProtocolError> {
    use ReceiverEvent as E;
    let next = |restored, placed, sent| {
        Ok(ReceiverState::Lazy {
            restored,
            placed,
            sent,
        })
    };
    match event {
        E::Pages => next(restored, placed, sent),
        E::Message(Message::LazySent { .. }) => next(restored, placed, true),
        E::Restored if !restored => next(true, placed, sent),
        E::AllPlaced if !placed => next(restored, true, sent),
        E::Message(Message::Released) if placed && restored => Ok(ReceiverState::Done),
        E::Message(Message::Released) => Err(ProtocolError::ReleasedEarly),
        other => Err(ProtocolError::Unexpected {
            state: ReceiverState::Lazy {
                restored,
                placed,
                sent,
            }
            .describe(),
            got: other.describe(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mose_wire::{ContainerIdentity, LazyStats};
    use proptest::prelude::*;
    use ReceiverEvent as E;

    fn identity() -> ContainerIdentity {
        ContainerIdentity {
            id: "c".into(),
            namespace: "default".into(),
            image: "img".into(),
            spec: serde_json::json!({}),
            labels: Default::default(),
            snapshotter: String::new(),
            runtime: String::new(),
        }
    }

    fn hello() -> Message {
        Message::Hello {
            version: PROTOCOL_VERSION,
            node: "a".into(),
        }
    }

    fn begin(technique: Technique) -> Message {
        Message::Begin {
            migration: "m".into(),
            technique,
            container: identity(),
        }
    }

    fn file(name: &str, size: u64) -> [Message; 2] {
        [
            Message::FileBegin {
                name: name.into(),
                size,
                hash: String::new(),
            },
            Message::FileEnd { name: name.into() },
        ]
    }

    /// Runs `events` from AwaitHello; the state after each.
    fn drive(events: &[E<'_>]) -> Result<Vec<ReceiverState>, ProtocolError> {
        let mut s = ReceiverState::AwaitHello;
        let mut seen = Vec::new();
        for e in events {
            s = s.step(*e)?;
            seen.push(s.clone());
        }
        Ok(seen)
    }

    /// Hello, Begin, image, a round, the final round, a file, manifests, Commit.
    fn transfer<'a>(b: &'a Message, h: &'a Message, m: &'a [Message]) -> Vec<E<'a>> {
        vec![
            E::Message(h),
            E::Message(b),
            E::Message(&m[0]),
            E::FileData { len: 3 },
            E::FileData { len: 2 },
            E::Message(&m[1]),
            E::Message(&m[2]),
            E::Blocks,
            E::Manifest { hint: true },
            E::Message(&m[3]),
            E::Message(&m[4]),
            E::Blocks,
            E::Message(&m[5]),
            E::Manifest { hint: false },
            E::Message(&m[6]),
        ]
    }

    fn transfer_messages() -> Vec<Message> {
        let [fb, fe] = file("core-1.img", 5);
        vec![
            fb,
            fe,
            Message::RoundStart {
                round: 1,
                final_round: false,
            },
            Message::RoundEnd {
                round: 1,
                blocks: 1,
            },
            Message::RoundStart {
                round: 2,
                final_round: true,
            },
            Message::RoundEnd {
                round: 2,
                blocks: 1,
            },
            Message::Commit,
        ]
    }

    #[test]
    fn cold_and_precopy_restore_then_wait_for_release() {
        for t in [Technique::Cold, Technique::Precopy] {
            let (h, b, m) = (hello(), begin(t), transfer_messages());
            let mut ev = transfer(&b, &h, &m);
            let released = Message::Released;
            ev.extend([E::Restored, E::Message(&released)]);
            let states = drive(&ev).unwrap();
            assert_eq!(
                states[1],
                ReceiverState::Transfer {
                    technique: t,
                    file: None
                }
            );
            assert_eq!(states[ev.len() - 3], ReceiverState::Restoring);
            assert_eq!(states[ev.len() - 2], ReceiverState::AwaitRelease);
            assert_eq!(states.last(), Some(&ReceiverState::Done));
        }
    }

    #[test]
    fn postcopy_and_hybrid_release_only_once_every_page_is_placed() {
        for t in [Technique::Postcopy, Technique::Hybrid] {
            let (h, b, m) = (hello(), begin(t), transfer_messages());
            let sent = Message::LazySent { pages: 9 };
            let released = Message::Released;
            let mut ev = transfer(&b, &h, &m);
            ev.extend([
                E::Pages,
                E::Restored,
                E::Pages,
                E::Message(&sent),
                E::AllPlaced,
                E::Pages,
                E::Message(&released),
            ]);
            let states = drive(&ev).unwrap();
            assert!(states[ev.len() - 8].is_lazy());
            assert_eq!(states.last(), Some(&ReceiverState::Done));
            // Released before the last page is placed
            let mut early = transfer(&b, &h, &m);
            early.extend([E::Restored, E::Message(&released)]);
            assert_eq!(drive(&early), Err(ProtocolError::ReleasedEarly));
        }
    }

    #[test]
    fn pod_hand_over_requests_are_answered_once_and_end_the_connection() {
        let h = hello();
        let q = Message::PodQuery {
            namespace: "default".into(),
            pod: "p".into(),
        };
        let pull = Message::Pull {
            namespace: "default".into(),
            pod: "p".into(),
            container: "c".into(),
            technique: Some(Technique::Precopy),
            reply_to: "10.0.0.2:7700".into(),
        };
        for m in [&q, &pull] {
            let states = drive(&[E::Message(&h), E::Message(m)]).unwrap();
            assert_eq!(states.last(), Some(&ReceiverState::Done));
            // nothing may follow on that connection
            assert!(drive(&[E::Message(&h), E::Message(m), E::Message(m)]).is_err());
            // and they come only in place of Begin
            assert!(drive(&[E::Message(m)]).is_err());
        }
    }

    #[test]
    fn a_probe_absorbs_its_filler_and_refuses_absurd_sizes() {
        let (h, m) = (hello(), Message::Measure { bytes: 10 });
        let states = drive(&[
            E::Message(&h),
            E::Message(&m),
            E::FileData { len: 4 },
            E::FileData { len: 6 },
        ])
        .unwrap();
        assert_eq!(states[2], ReceiverState::Probe { remaining: 6 });
        assert_eq!(states[3], ReceiverState::Done);
        for bytes in [0, MAX_PROBE_BYTES + 1] {
            let m = Message::Measure { bytes };
            assert!(matches!(
                drive(&[E::Message(&h), E::Message(&m)]),
                Err(ProtocolError::ProbeSize { .. })
            ));
        }
        assert!(drive(&[E::Message(&h), E::Message(&m), E::Blocks]).is_err());
    }

    #[test]
    fn every_failure_of_the_chart_is_one_precise_error() {
        let old = Message::Hello {
            version: PROTOCOL_VERSION + 1,
            node: "a".into(),
        };
        assert_eq!(
            drive(&[E::Message(&old)]),
            Err(ProtocolError::Version {
                got: PROTOCOL_VERSION + 1,
                ours: PROTOCOL_VERSION
            })
        );
        let commit = Message::Commit;
        let err = drive(&[E::Message(&commit)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unexpected commit message while waiting for Hello"
        );
    }

    #[test]
    fn files_aborts_and_misplaced_messages_are_one_precise_error() {
        let (h, commit) = (hello(), Message::Commit);
        let b = begin(Technique::Cold);
        let [fb, fe] = file("x", 4);
        let start = [E::Message(&h), E::Message(&b)];
        let with = |more: &[E<'_>]| {
            let mut v = start.to_vec();
            v.extend_from_slice(more);
            drive(&v)
        };
        assert_eq!(
            with(&[E::FileData { len: 1 }]),
            Err(ProtocolError::DataOutsideFile)
        );
        assert!(matches!(
            with(&[E::Message(&fb), E::FileData { len: 5 }]),
            Err(ProtocolError::FileTooLong { .. })
        ));
        assert!(matches!(
            with(&[E::Message(&fb), E::FileData { len: 3 }, E::Message(&fe)]),
            Err(ProtocolError::FileTruncated {
                written: 3,
                size: 4,
                ..
            })
        ));
        assert!(matches!(
            with(&[E::Message(&fb), E::Message(&fb)]),
            Err(ProtocolError::FileInsideFile { .. })
        ));
        let other_end = Message::FileEnd { name: "y".into() };
        assert!(matches!(
            with(&[
                E::Message(&fb),
                E::FileData { len: 4 },
                E::Message(&other_end)
            ]),
            Err(ProtocolError::FileEndMismatch { .. })
        ));
        assert!(matches!(
            with(&[E::Message(&fb), E::Message(&commit)]),
            Err(ProtocolError::CommitInsideFile { .. })
        ));
        assert!(matches!(
            with(&[E::Pages]),
            Err(ProtocolError::Unexpected { .. })
        ));
        assert!(matches!(
            with(&[E::Message(&commit), E::Message(&Message::Released)]),
            Err(ProtocolError::Unexpected { .. })
        ));
        let abort = Message::Abort {
            reason: "operator".into(),
        };
        for n in 0..start.len() {
            let mut v = start[..n].to_vec();
            v.push(E::Message(&abort));
            assert_eq!(
                drive(&v),
                Err(ProtocolError::Aborted {
                    reason: "operator".into()
                })
            );
        }
        let done = Message::LazyDone {
            stats: LazyStats::default(),
        };
        assert!(matches!(
            with(&[E::Message(&done)]),
            Err(ProtocolError::Unexpected { .. })
        ));
    }

    fn any_event() -> impl Strategy<Value = u8> {
        0u8..24
    }

    /// An event (and the message it may borrow) from a small alphabet that
    /// covers every message and local event.
    fn event_of(code: u8, msgs: &[Message]) -> E<'_> {
        match code {
            0 => E::Blocks,
            1 => E::Manifest { hint: true },
            2 => E::Manifest { hint: false },
            3 => E::FileData { len: 3 },
            4 => E::Pages,
            5 => E::Restored,
            6 => E::AllPlaced,
            c => E::Message(&msgs[(c as usize - 7) % msgs.len()]),
        }
    }

    fn alphabet() -> Vec<Message> {
        let [fb, fe] = file("f", 3);
        vec![
            hello(),
            begin(Technique::Hybrid),
            begin(Technique::Cold),
            Message::Measure { bytes: 5 },
            fb,
            fe,
            Message::RoundStart {
                round: 1,
                final_round: false,
            },
            Message::Commit,
            Message::Released,
            Message::LazySent { pages: 1 },
            Message::Abort { reason: "x".into() },
            Message::Ack,
            Message::PageRequest {
                pid: 1,
                vaddr: 0,
                pages: 1,
            },
            Message::LazyDone {
                stats: LazyStats::default(),
            },
            Message::Failed {
                step: "s".into(),
                error: "e".into(),
            },
            Message::Restored {
                pid: 1,
                restore_ms: 0.0,
                prepare_ms: 0.0,
                steps: vec![],
            },
            Message::HelloOk {
                version: PROTOCOL_VERSION,
                node: "b".into(),
            },
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any sequence of events either walks the chart or stops at one
        /// error; Done is only reached through Released or a probe's end.
        #[test]
        fn arbitrary_event_sequences_never_panic(codes in proptest::collection::vec(any_event(), 0..64)) {
            let msgs = alphabet();
            let mut s = ReceiverState::AwaitHello;
            for c in codes {
                let e = event_of(c, &msgs);
                let done_by = matches!(e, E::Message(Message::Released) | E::FileData { .. });
                match s.clone().step(e) {
                    Ok(next) => {
                        if next == ReceiverState::Done && s != ReceiverState::Done {
                            prop_assert!(done_by, "{s:?} --{e:?}--> Done");
                        }
                        s = next;
                    }
                    Err(err) => {
                        prop_assert!(!err.to_string().is_empty());
                        break;
                    }
                }
            }
        }
    }
}
