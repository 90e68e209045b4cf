//! The sender's state machine: the source's states of the sequence chart in
//! `docs/migration.md`, and the one transition function
//! [`SenderState::step`]. Pure: the driver ([`super`]) performs each step's
//! I/O and feeds back what it did and what the destination answered.
//!
//! ```text
//! Connecting --sent Hello--> AwaitHelloOk --HelloOk--> AwaitBeginOk
//!   --BeginOk{has_image}--> Live            (or SendingImage --sent--> AwaitImageAck --Ack--> Live)
//! Live --round sent--> Live --froze--> Frozen --dumped+sent--> Committing
//!   Committing --sent Commit--> AwaitRestored (cold, pre-copy) | Lazy (post-copy, hybrid)
//! AwaitRestored --Restored--> Restored --sent Released--> AwaitAck --Ack--> Done
//! Lazy{restored,placed,sent}: PageRequest, LazyProgress, Restored, LazyDone,
//!   sent LazySent; --sent Released (restored and placed)--> AwaitAck
//! ```
//! From `Frozen` until `Done` a failure resumes the source
//! ([`SenderState::must_resume`]); in `Lazy` the destination may already run
//! the restored copy ([`SenderState::destination_may_run`]).

use mose_wire::{Message, Technique, PROTOCOL_VERSION};

use crate::error::ProtocolError;

/// Where the source is in a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderState {
    /// Connecting and authenticating.
    Connecting,
    /// `Hello` sent.
    AwaitHelloOk,
    /// `Begin` sent.
    AwaitBeginOk,
    /// The destination lacks the image: sending it.
    SendingImage,
    /// Image sent; the destination acknowledges once it is imported.
    AwaitImageAck,
    /// The container runs; pre-copy rounds (`round` done so far).
    Live { round: u32 },
    /// Paused and dumped (or dumping): a failure from here on resumes it.
    Frozen,
    /// The final transfer is on the wire.
    Committing,
    /// Cold and pre-copy: `Commit` sent, the destination restores.
    AwaitRestored,
    /// The destination runs the container; the source has not let go yet.
    Restored,
    /// Post-copy and hybrid after `Commit`: serving lazy pages.
    Lazy {
        restored: bool,
        placed: bool,
        sent: bool,
    },
    /// `Released` sent; the destination's `Ack` completes the hand-over.
    AwaitAck,
    /// The destination owns the container.
    Done,
}

/// What the sender did, or what the destination answered.
#[derive(Debug, Clone, Copy)]
pub enum SenderEvent<'a> {
    /// A message from the destination.
    Received(&'a Message),
    /// `Hello` went out on a fresh, authenticated stream.
    SentHello,
    /// The image went out.
    SentImage,
    /// A pre-copy round went out.
    SentRound,
    /// The container is paused (the dump follows).
    Froze,
    /// The dump is done; the final transfer starts.
    Dumped,
    /// `Commit` went out.
    SentCommit,
    /// Lazy phase: every lazy page went out (`LazySent`).
    SentLazy,
    /// `Released` went out.
    SentReleased,
}

impl SenderEvent<'_> {
    fn describe(&self) -> String {
        match self {
            SenderEvent::Received(m) => format!("{} message", m.name()),
            other => format!("{other:?}"),
        }
    }
}

impl SenderState {
    /// What the state waits for, as errors say it.
    pub fn describe(&self) -> &'static str {
        match self {
            SenderState::Connecting => "connecting",
            SenderState::AwaitHelloOk => "waiting for HelloOk",
            SenderState::AwaitBeginOk => "waiting for BeginOk",
            SenderState::SendingImage => "sending the image",
            SenderState::AwaitImageAck => "waiting for the image's import",
            SenderState::Live { .. } => "copying memory while the container runs",
            SenderState::Frozen => "freezing and dumping",
            SenderState::Committing => "sending the final transfer",
            SenderState::AwaitRestored => "waiting for Restored",
            SenderState::Restored => "releasing the source",
            SenderState::Lazy { .. } => "serving lazy pages",
            SenderState::AwaitAck => "waiting for the release's Ack",
            SenderState::Done => "done",
        }
    }

    /// Whether the source is paused and still its own: a failure now must
    /// resume it.
    pub fn must_resume(&self) -> bool {
        !matches!(
            self,
            SenderState::Connecting
                | SenderState::AwaitHelloOk
                | SenderState::AwaitBeginOk
                | SenderState::SendingImage
                | SenderState::AwaitImageAck
                | SenderState::Live { .. }
                | SenderState::Done
        )
    }

    /// Whether the destination may be running a restored copy that only its
    /// own silence timer stops: a lazy restore was committed and not yet
    /// acknowledged as released.
    pub fn destination_may_run(&self, technique: Technique) -> bool {
        technique.is_lazy() && matches!(self, SenderState::Lazy { .. } | SenderState::AwaitAck)
    }

    /// The transition function for a migration by `technique`: the state
    /// after `event`, or why `event` is not allowed here. `Failed` from the
    /// destination is not handled here: the driver reports it as the
    /// destination's own error.
    pub fn step(
        self,
        technique: Technique,
        event: SenderEvent<'_>,
    ) -> Result<SenderState, ProtocolError> {
        use SenderEvent as E;
        use SenderState as S;
        match (self, event) {
            (S::Connecting, E::SentHello) => Ok(S::AwaitHelloOk),
            (S::AwaitHelloOk, E::Received(Message::HelloOk { version, .. })) => {
                if *version == PROTOCOL_VERSION {
                    Ok(S::AwaitBeginOk)
                } else {
                    Err(ProtocolError::Version {
                        got: *version,
                        ours: PROTOCOL_VERSION,
                    })
                }
            }
            (S::AwaitBeginOk, E::Received(Message::BeginOk { has_image: true })) => {
                Ok(S::Live { round: 0 })
            }
            (S::AwaitBeginOk, E::Received(Message::BeginOk { has_image: false })) => {
                Ok(S::SendingImage)
            }
            (S::SendingImage, E::SentImage) => Ok(S::AwaitImageAck),
            (S::AwaitImageAck, E::Received(Message::Ack)) => Ok(S::Live { round: 0 }),
            (S::Live { round }, E::SentRound) if technique.has_rounds() => {
                Ok(S::Live { round: round + 1 })
            }
            (S::Live { .. }, E::Froze) => Ok(S::Frozen),
            (S::Frozen, E::Dumped) => Ok(S::Committing),
            (S::Committing, E::SentCommit) if technique.is_lazy() => Ok(S::Lazy {
                restored: false,
                placed: false,
                sent: false,
            }),
            (S::Committing, E::SentCommit) => Ok(S::AwaitRestored),
            (S::AwaitRestored, E::Received(Message::Restored { .. })) => Ok(S::Restored),
            (S::Restored, E::SentReleased) => Ok(S::AwaitAck),
            (
                S::Lazy {
                    restored,
                    placed,
                    sent,
                },
                event,
            ) => lazy(restored, placed, sent, event),
            (S::AwaitAck, E::Received(Message::Ack)) => Ok(S::Done),
            (state, event) => Err(ProtocolError::Unexpected {
                state: state.describe(),
                got: event.describe(),
            }),
        }
    }
}

fn lazy(
    restored: bool,
    placed: bool,
    sent: bool,
    event: SenderEvent<'_>,
) -> Result<SenderState, ProtocolError> {
    use SenderEvent as E;
    let next = |restored, placed, sent| {
        Ok(SenderState::Lazy {
            restored,
            placed,
            sent,
        })
    };
    match event {
        E::Received(Message::PageRequest { .. } | Message::LazyProgress { .. }) => {
            next(restored, placed, sent)
        }
        E::Received(Message::Restored { .. }) if !restored => next(true, placed, sent),
        E::Received(Message::LazyDone { .. }) if !placed => next(restored, true, sent),
        E::SentLazy if !sent => next(restored, placed, true),
        E::SentReleased if restored && placed => Ok(SenderState::AwaitAck),
        other => Err(ProtocolError::Unexpected {
            state: SenderState::Lazy {
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
    use mose_wire::LazyStats;
    use proptest::prelude::*;
    use SenderEvent as E;

    fn hello_ok() -> Message {
        Message::HelloOk {
            version: PROTOCOL_VERSION,
            node: "b".into(),
        }
    }

    fn restored() -> Message {
        Message::Restored {
            pid: 7,
            restore_ms: 1.0,
            prepare_ms: 0.0,
            steps: vec![],
        }
    }

    fn drive(t: Technique, events: &[E<'_>]) -> Result<Vec<SenderState>, ProtocolError> {
        let mut s = SenderState::Connecting;
        let mut seen = Vec::new();
        for e in events {
            s = s.step(t, *e)?;
            seen.push(s);
        }
        Ok(seen)
    }

    #[test]
    fn cold_and_precopy_walk_the_chart_and_resume_only_while_frozen() {
        let (ok, has, ack, r) = (
            hello_ok(),
            Message::BeginOk { has_image: true },
            Message::Ack,
            restored(),
        );
        for t in [Technique::Cold, Technique::Precopy] {
            let mut ev = vec![E::SentHello, E::Received(&ok), E::Received(&has)];
            if t.has_rounds() {
                ev.extend([E::SentRound, E::SentRound]);
            }
            ev.extend([
                E::Froze,
                E::Dumped,
                E::SentCommit,
                E::Received(&r),
                E::SentReleased,
                E::Received(&ack),
            ]);
            let states = drive(t, &ev).unwrap();
            let resume: Vec<bool> = states.iter().map(|s| s.must_resume()).collect();
            let frozen = states
                .iter()
                .position(|s| *s == SenderState::Frozen)
                .unwrap();
            assert!(resume[..frozen].iter().all(|r| !r), "{t}: {states:?}");
            assert!(
                resume[frozen..states.len() - 1].iter().all(|r| *r),
                "{t}: {states:?}"
            );
            assert_eq!(states.last(), Some(&SenderState::Done));
            assert!(!states.iter().any(|s| s.destination_may_run(t)));
        }
        // cold has no rounds
        assert!(drive(
            Technique::Cold,
            &[
                E::SentHello,
                E::Received(&ok),
                E::Received(&has),
                E::SentRound
            ]
        )
        .is_err());
    }

    #[test]
    fn the_image_is_sent_and_acknowledged_when_the_destination_lacks_it() {
        let (ok, lacks, ack) = (
            hello_ok(),
            Message::BeginOk { has_image: false },
            Message::Ack,
        );
        let states = drive(
            Technique::Cold,
            &[
                E::SentHello,
                E::Received(&ok),
                E::Received(&lacks),
                E::SentImage,
                E::Received(&ack),
            ],
        )
        .unwrap();
        assert_eq!(states[2], SenderState::SendingImage);
        assert_eq!(states[4], SenderState::Live { round: 0 });
        // freezing before the import is acknowledged is refused
        assert!(drive(
            Technique::Cold,
            &[
                E::SentHello,
                E::Received(&ok),
                E::Received(&lacks),
                E::SentImage,
                E::Froze
            ]
        )
        .is_err());
    }

    #[test]
    fn postcopy_and_hybrid_release_once_restored_and_placed() {
        let (ok, has, ack, r) = (
            hello_ok(),
            Message::BeginOk { has_image: true },
            Message::Ack,
            restored(),
        );
        let (req, prog) = (
            Message::PageRequest {
                pid: 7,
                vaddr: 0x1000,
                pages: 16,
            },
            Message::LazyProgress { pages: 64 },
        );
        let done = Message::LazyDone {
            stats: LazyStats::default(),
        };
        for t in [Technique::Postcopy, Technique::Hybrid] {
            let mut ev = vec![E::SentHello, E::Received(&ok), E::Received(&has)];
            if t.has_rounds() {
                ev.push(E::SentRound);
            }
            ev.extend([
                E::Froze,
                E::Dumped,
                E::SentCommit,
                E::Received(&req),
                E::Received(&r),
                E::Received(&prog),
                E::SentLazy,
                E::Received(&done),
                E::SentReleased,
                E::Received(&ack),
            ]);
            let states = drive(t, &ev).unwrap();
            let lazy = states
                .iter()
                .position(|s| s.destination_may_run(t))
                .unwrap();
            assert!(matches!(
                states[lazy],
                SenderState::Lazy {
                    restored: false,
                    ..
                }
            ));
            assert_eq!(states.last(), Some(&SenderState::Done));
            // releasing before every page is placed is refused
            let early = [
                E::SentHello,
                E::Received(&ok),
                E::Received(&has),
                E::Froze,
                E::Dumped,
                E::SentCommit,
                E::Received(&r),
                E::SentReleased,
            ];
            assert!(matches!(
                drive(t, &early),
                Err(ProtocolError::Unexpected { .. })
            ));
        }
    }

    #[test]
    fn unexpected_answers_are_one_precise_error() {
        let (ok, r) = (hello_ok(), restored());
        let old = Message::HelloOk {
            version: PROTOCOL_VERSION + 1,
            node: "b".into(),
        };
        assert!(matches!(
            drive(Technique::Cold, &[E::SentHello, E::Received(&old)]),
            Err(ProtocolError::Version { .. })
        ));
        let err = drive(
            Technique::Cold,
            &[E::SentHello, E::Received(&ok), E::Received(&r)],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unexpected restored message while waiting for BeginOk"
        );
        let req = Message::PageRequest {
            pid: 1,
            vaddr: 0,
            pages: 1,
        };
        let has = Message::BeginOk { has_image: true };
        assert!(drive(
            Technique::Cold,
            &[
                E::SentHello,
                E::Received(&ok),
                E::Received(&has),
                E::Froze,
                E::Dumped,
                E::SentCommit,
                E::Received(&req)
            ]
        )
        .is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any sequence of events either walks the chart or stops at one
        /// error, and Done is reached only through the destination's Ack.
        #[test]
        fn arbitrary_event_sequences_never_panic(t in 0u8..4, codes in proptest::collection::vec(0u8..20, 0..48)) {
            let technique = [Technique::Cold, Technique::Precopy, Technique::Postcopy, Technique::Hybrid][t as usize];
            let msgs = [hello_ok(), Message::BeginOk { has_image: false }, Message::BeginOk { has_image: true }, Message::Ack, restored(),
                Message::PageRequest { pid: 1, vaddr: 0, pages: 1 }, Message::LazyProgress { pages: 1 },
                Message::LazyDone { stats: LazyStats::default() }, Message::Failed { step: "s".into(), error: "e".into() }, Message::Commit, Message::Released];
            let mut s = SenderState::Connecting;
            for c in codes {
                let e = match c {
                    0 => E::SentHello, 1 => E::SentImage, 2 => E::SentRound, 3 => E::Froze, 4 => E::Dumped,
                    5 => E::SentCommit, 6 => E::SentLazy, 7 => E::SentReleased,
                    c => E::Received(&msgs[(c as usize - 8) % msgs.len()]),
                };
                match s.step(technique, e) {
                    Ok(next) => {
                        if next == SenderState::Done {
                            prop_assert!(matches!(e, E::Received(Message::Ack)) && s == SenderState::AwaitAck);
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
