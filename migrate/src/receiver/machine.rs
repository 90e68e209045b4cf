//! The receiver's state machine: the destination's states of the sequence
//! chart in `docs/migration.md`, and the one transition function
//! [`ReceiverState::step`]. Pure: no I/O, so every path of the chart (and any
//! hostile frame sequence) is testable without containers.
//!
//! ```text
//! AwaitHello --Hello--> AwaitBegin --Measure--> Probe --filler...--> Done
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
